"""Index the eNTERFACE'05 audio-visual emotion database (induced emotions, English, 1166+ clips).

Layout of the distribution: ``<root>/subject <N>/<emotion>/sentence <k>/s<N>_<emo>_<k>.avi`` with
emotion codes an, di, fe, ha, sa, su. The distributed trees are irregular: subject 6 is absent,
some emotions lack the ``sentence <k>`` level, some copies add a wrapper folder, capitalisation
varies, some file names read ``s_3_an_1.avi``. The file name is therefore the authority for
subject, emotion and sentence; folder names that disagree with it are logged and noted.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from datamodules.clips import PAPER_EMOTIONS, Clip, IndexResult
from datamodules.corpora import (
    EMOTION_CODES,
    check_on_error,
    finish_index,
    natural_key,
    normalise_extension,
    require_root,
    scan_media,
    sort_files,
)

logger = logging.getLogger(__name__)

_EMOTION_FOLDERS: dict[str, str] = {
    **{label: label for label in PAPER_EMOTIONS},
    "angry": "anger",
    "disgusted": "disgust",
    "fearful": "fear",
    "happy": "happiness",
    "sad": "sadness",
    "surprised": "surprise",
}
_FILE_STEM = re.compile(r"s_?(\d+)_(an|di|fe|ha|sa|su)_(\d+)", re.IGNORECASE)
_SUBJECT_FOLDER = re.compile(r"subject[\s_-]*(\d+)", re.IGNORECASE)
_SENTENCE_FOLDER = re.compile(r"sentence[\s_-]*(\d+)", re.IGNORECASE)


def expected_layout(extensions: Sequence[str] = (".avi",)) -> str:
    suffix = "|".join(normalise_extension(extension) for extension in extensions)
    return (
        f"<root>/subject <N>/<emotion>/sentence <k>/s<N>_<emo>_<k>({suffix}) with emotion codes "
        f"{', '.join(EMOTION_CODES)} (file names s_<N>_<emo>_<k> accepted too; folders optional)"
    )


def subject_name(number: int) -> str:
    return f"subject_{number:02d}"


def parse_path(path: Path, root: Path) -> tuple[Clip, list[str]]:
    """The clip a file is, and the folder names that disagree with its file name.

    ``ValueError`` with the reason when the file name does not parse.
    """
    match = _FILE_STEM.fullmatch(path.stem.strip())
    if match is None:
        raise ValueError(f"file name {path.name!r} is not s<N>_<emo>_<k> with <emo> in {', '.join(EMOTION_CODES)}")
    number, code, sentence = int(match.group(1)), match.group(2).lower(), int(match.group(3))
    subject, label = subject_name(number), EMOTION_CODES[code]
    clip = Clip(
        clip_id=f"{subject}_{code}_{sentence}",
        path=path,
        subject=subject,
        label=label,
        extra={"sentence": sentence, "emotion_code": code},
    )
    return clip, _folder_disagreements(path.relative_to(root).parts[:-1], number, label, sentence)


def _folder_disagreements(folders: Sequence[str], number: int, label: str, sentence: int) -> list[str]:
    """What the nearest subject, emotion and sentence folders say, where it differs from the file name."""
    disagreements = []
    subject_folder = _nearest(folders, lambda name: _SUBJECT_FOLDER.fullmatch(name) is not None)
    if subject_folder is not None:
        folder_number = int(_SUBJECT_FOLDER.fullmatch(subject_folder).group(1))
        if folder_number != number:
            disagreements.append(f"folder {subject_folder!r} says subject {folder_number}, file says {number}")
    emotion_folder = _nearest(folders, lambda name: name.lower() in _EMOTION_FOLDERS)
    if emotion_folder is not None and _EMOTION_FOLDERS[emotion_folder.lower()] != label:
        disagreements.append(
            f"folder {emotion_folder!r} says {_EMOTION_FOLDERS[emotion_folder.lower()]}, file says {label}"
        )
    sentence_folder = _nearest(folders, lambda name: _SENTENCE_FOLDER.fullmatch(name) is not None)
    if sentence_folder is not None:
        folder_sentence = int(_SENTENCE_FOLDER.fullmatch(sentence_folder).group(1))
        if folder_sentence != sentence:
            disagreements.append(f"folder {sentence_folder!r} says sentence {folder_sentence}, file says {sentence}")
    return disagreements


def _nearest(folders: Sequence[str], matches: Callable[[str], bool]) -> str | None:
    """The folder closest to the file (stripped of surrounding spaces) for which ``matches`` holds."""
    return next((name for name in (folder.strip() for folder in reversed(folders)) if matches(name)), None)


def coverage_notes(clips: list[Clip]) -> list[str]:
    """Notes on subjects lacking an emotion and on subject numbers absent below the largest one."""
    labels_by_subject: dict[str, set[str]] = defaultdict(set)
    for clip in clips:
        labels_by_subject[clip.subject].add(clip.label)
    notes = [
        f"{subject} has no clips of {', '.join(label for label in PAPER_EMOTIONS if label not in labels)}"
        for subject, labels in sorted(labels_by_subject.items(), key=lambda item: natural_key(item[0]))
        if not labels.issuperset(PAPER_EMOTIONS)
    ]
    numbers = {int(subject.rsplit("_", 1)[1]) for subject in labels_by_subject}
    absent = sorted(set(range(1, max(numbers, default=0) + 1)) - numbers)
    if absent:
        notes.append(f"no clips of subject number(s) {', '.join(map(str, absent))}")
    return notes


def index(root: str | Path, *, on_error: str = "skip", extensions: Sequence[str] = (".avi",)) -> IndexResult:
    """Index every video file (by ``extensions``) under ``root``; other files are counted in ``other_files``.

    A video file whose name does not parse is listed in ``IndexResult.skipped`` (``on_error="skip"``)
    or raises ``CorpusLayoutError`` (``on_error="raise"``). Folder names that disagree with the
    file name do not cost the clip: they are logged as warnings and listed in ``IndexResult.notes``.
    """
    check_on_error(on_error)
    root = require_root(root, "eNTERFACE'05")
    notes: list[str] = []

    def parse(path: Path) -> Clip:
        clip, disagreements = parse_path(path, root)
        for disagreement in disagreements:
            note = f"{path}: {disagreement}; the file name is used"
            logger.warning(note)
            notes.append(note)
        return clip

    scan = scan_media(root, extensions)
    clips, problems, _ = sort_files(scan.files, parse)
    result = finish_index(
        clips,
        problems,
        scan=scan,
        corpus="eNTERFACE'05",
        root=root,
        expected=expected_layout(extensions),
        on_error=on_error,
        notes=notes,
    )
    result.notes.extend(coverage_notes(result.clips))
    return result
