"""Index EmoDB, the Berlin Database of Emotional Speech (10 actors, 7 emotions, audio only).

File names are ``<speaker><text><emotion><version>.wav`` under ``<root>/wav/``: speaker two digits
(03, 08-16), text code three characters (a01 ... b10), emotion letter (W Wut anger, L Langeweile
boredom, E Ekel disgust, A Angst fear, F Freude happiness, T Trauer sadness, N neutral), version a
lower-case letter (repeated takes of the same sentence). ``03a01Fa.wav``: speaker 03 says sentence
a01 happily, first version. Labels are mapped onto the paper's emotion names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from datamodules.clips import Clip, IndexResult, class_rule
from datamodules.corpora import check_classes, check_on_error, finish_index, require_root, scan_media, sort_files

EMOTIONS: dict[str, str] = {
    "W": "anger",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
    "F": "happiness",
    "T": "sadness",
    "N": "neutral",
}
# The corpus's documentation: speaker number -> gender.
SPEAKERS: dict[str, str] = {
    "03": "male",
    "08": "female",
    "09": "female",
    "10": "male",
    "11": "male",
    "12": "male",
    "13": "female",
    "14": "female",
    "15": "male",
    "16": "female",
}
AUDIO_SUFFIX = ".wav"
EXPECTED_LAYOUT = (
    "<root>/wav/<speaker><text><emotion><version>.wav with speaker in "
    f"{' '.join(SPEAKERS)}, a three-character text code (a01 ... b10), emotion in "
    f"{' '.join(EMOTIONS)}, version a lower-case letter (e.g. wav/03a01Fa.wav)"
)
_FILE_STEM = re.compile(r"(\d{2})([ab]\d{2})([A-Z])([a-z])")


def parse_path(path: Path) -> Clip:
    """The clip a file is, with its text code, version and speaker's gender in ``extra``;
    ``ValueError`` with the reason when its name does not parse."""
    match = _FILE_STEM.fullmatch(path.stem)
    if match is None:
        raise ValueError(f"file name {path.name!r} is not <speaker NN><text a01..b10><emotion letter><version>")
    speaker, text, emotion, version = match.groups()
    if speaker not in SPEAKERS:
        raise ValueError(f"speaker {speaker} in {path.name!r} is not one of {', '.join(SPEAKERS)}")
    if emotion not in EMOTIONS:
        raise ValueError(f"emotion letter {emotion} in {path.name!r} is not one of {', '.join(EMOTIONS)}")
    return Clip(
        clip_id=path.stem,
        path=path,
        subject=f"speaker_{speaker}",
        label=EMOTIONS[emotion],
        extra={"text": text, "version": version, "emotion_code": emotion, "gender": SPEAKERS[speaker]},
    )


def index(
    root: str | Path,
    *,
    on_error: str = "skip",
    classes: Sequence[str] = ("anger", "disgust", "fear", "happiness", "sadness"),
) -> IndexResult:
    """Index every ``.wav`` file under ``root`` whose label is in ``classes``; other files are counted.

    Files of other classes are listed in ``IndexResult.excluded``. A wav file whose name does not parse
    is listed in ``IndexResult.skipped`` (``on_error="skip"``) or raises ``CorpusLayoutError``
    (``on_error="raise"``).
    """
    check_on_error(on_error)
    check_classes(classes, EMOTIONS.values(), "EmoDB")
    root = require_root(root, "EmoDB")
    scan = scan_media(root, (AUDIO_SUFFIX,))
    clips, problems, excluded = sort_files(scan.files, parse_path, lambda clip: class_rule(clip, classes))
    expected = f"{EXPECTED_LAYOUT}; selected classes={list(classes)}"
    return finish_index(
        clips, problems, scan=scan, excluded=excluded, corpus="EmoDB", root=root, expected=expected, on_error=on_error
    )
