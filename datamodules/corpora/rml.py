"""Index the RML audio-visual emotion database (Ryerson Multimedia Lab; 8 speakers, 720 clips).

Layout of the distribution: ``<root>/**/s<N>/[<language>/]<emo><k>.avi`` (``rml-1`` holds s1-s5,
``rml-2`` s6-s8; some speakers have one folder per language). Emotion codes: an, di, fe, ha,
sa, su. The subject comes from the nearest ``s<N>`` folder above the file, the language from
the folder between it and the file, when there is one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from datamodules.clips import Clip, IndexResult
from datamodules.corpora import (
    EMOTION_CODES,
    check_on_error,
    finish_index,
    normalise_extension,
    require_root,
    safe_id,
    scan_media,
    sort_files,
)

_SPEAKER_FOLDER = re.compile(r"s(\d+)", re.IGNORECASE)
_FILE_STEM = re.compile(r"(an|di|fe|ha|sa|su)(\d+)", re.IGNORECASE)


def expected_layout(extensions: Sequence[str] = (".avi",)) -> str:
    suffix = "|".join(normalise_extension(extension) for extension in extensions)
    return (
        f"<root>/**/s<N>/[<language>/]<emotion><k>({suffix}) with emotion codes "
        f"{', '.join(EMOTION_CODES)} (e.g. rml-1/s1/an1.avi, rml-2/s7/English/ha12.avi)"
    )


def parse_path(path: Path, root: Path) -> Clip:
    """The clip a file under ``root`` is; ``ValueError`` with the reason when its path does not parse."""
    match = _FILE_STEM.fullmatch(path.stem.strip())
    if match is None:
        raise ValueError(f"file name {path.name!r} is not <emotion code><k> with a code in {', '.join(EMOTION_CODES)}")
    folders = [root.name, *path.relative_to(root).parts[:-1]]
    speaker_position = next(
        (position for position in reversed(range(len(folders))) if _SPEAKER_FOLDER.fullmatch(folders[position])),
        None,
    )
    if speaker_position is None:
        raise ValueError("no speaker folder s<N> above the file")
    subject = f"s{int(_SPEAKER_FOLDER.fullmatch(folders[speaker_position]).group(1)):02d}"
    between = folders[speaker_position + 1 :]
    code, sample = match.group(1).lower(), int(match.group(2))
    clip_id = "_".join([subject, *(safe_id(folder.lower()) for folder in between), f"{code}{sample:02d}"])
    return Clip(
        clip_id=clip_id,
        path=path,
        subject=subject,
        label=EMOTION_CODES[code],
        extra={"language": between[0] if between else None, "emotion_code": code, "sample": sample},
    )


def index(root: str | Path, *, on_error: str = "skip", extensions: Sequence[str] = (".avi",)) -> IndexResult:
    """Index every video file (by ``extensions``) under ``root``; other files are counted in ``other_files``.

    A video file whose path does not parse is listed in ``IndexResult.skipped`` with the reason
    (``on_error="skip"``) or raises ``CorpusLayoutError`` (``on_error="raise"``).
    """
    check_on_error(on_error)
    root = require_root(root, "RML")
    scan = scan_media(root, extensions)
    clips, problems, _ = sort_files(scan.files, lambda path: parse_path(path, root))
    return finish_index(
        clips, problems, scan=scan, corpus="RML", root=root, expected=expected_layout(extensions), on_error=on_error
    )
