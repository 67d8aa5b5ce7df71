"""Index RAVDESS (Ryerson Audio-Visual Database of Emotional Speech and Song; 24 actors).

File names are ``MM-VV-EE-II-SS-RR-AA.<ext>`` under ``Actor_AA/``: modality (01 audio-video,
02 video-only, 03 audio-only), vocal channel (01 speech, 02 song), emotion (01 neutral, 02 calm,
03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised), intensity (01 normal,
02 strong), statement (01 "Kids are talking by the door", 02 "Dogs are sitting by the door"),
repetition, actor. Labels are mapped onto the paper's emotion names (happy -> happiness, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from datamodules.clips import PAPER_EMOTIONS, Clip, IndexResult, class_rule
from datamodules.corpora import check_classes, check_on_error, finish_index, require_root, scan_media, sort_files

MODALITIES: dict[str, str] = {"01": "audio_video", "02": "video", "03": "audio"}
VOCAL_CHANNELS: dict[str, str] = {"01": "speech", "02": "song"}
EMOTIONS: dict[str, str] = {
    "01": "neutral",
    "02": "calm",
    "03": "happiness",
    "04": "sadness",
    "05": "anger",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}
INTENSITIES: dict[str, str] = {"01": "normal", "02": "strong"}
STATEMENTS: dict[str, str] = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
SELECTABLE_MODALITIES: tuple[str, ...] = ("audio_video", "audio")
VIDEO_SUFFIX = ".mp4"
AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac")
EXPECTED_LAYOUT = (
    "<root>/**/Actor_AA/MM-VV-EE-II-SS-RR-AA.(mp4|wav|flac) with MM in 01-03, VV in 01-02, EE in 01-08, "
    "II, SS, RR in 01-02, AA the actor (e.g. Actor_01/03-01-05-01-01-01-01.wav)"
)
_FILE_STEM = re.compile(r"(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})")
_ACTOR_FOLDER = re.compile(r"actor[\s_-]*(\d+)", re.IGNORECASE)


def parse_path(path: Path, root: Path) -> Clip:
    """The clip a file is, with every field of its name in ``extra``; ``ValueError`` with the reason.

    The actor folder above the file, when there is one, must agree with the name's actor field.
    """
    match = _FILE_STEM.fullmatch(path.stem)
    if match is None:
        raise ValueError(f"file name {path.name!r} is not MM-VV-EE-II-SS-RR-AA (seven two-digit fields)")
    modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    for field_name, code, known in (
        ("modality", modality, MODALITIES),
        ("vocal channel", channel, VOCAL_CHANNELS),
        ("emotion", emotion, EMOTIONS),
        ("intensity", intensity, INTENSITIES),
        ("statement", statement, STATEMENTS),
        ("repetition", repetition, ("01", "02")),
    ):
        if code not in known:
            raise ValueError(f"{field_name} code {code} in {path.name!r} is not one of {', '.join(known)}")
    if int(actor) == 0:
        raise ValueError(f"actor code 00 in {path.name!r}; actors are numbered from 01")
    actor_folders = [_ACTOR_FOLDER.fullmatch(folder) for folder in path.relative_to(root).parts[:-1]]
    actor_folders = [folder for folder in actor_folders if folder is not None]
    if actor_folders and int(actor_folders[-1].group(1)) != int(actor):
        raise ValueError(f"folder {actor_folders[-1].group(0)!r} disagrees with actor {actor} in the file name")
    return Clip(
        clip_id=path.stem,
        path=path,
        subject=f"actor_{int(actor):02d}",
        label=EMOTIONS[emotion],
        extra={
            "modality": MODALITIES[modality],
            "vocal_channel": VOCAL_CHANNELS[channel],
            "emotion_code": emotion,
            "intensity": INTENSITIES[intensity],
            "statement": STATEMENTS[statement],
            "repetition": int(repetition),
        },
    )


def is_modality(clip: Clip, modality: str) -> bool:
    """``audio_video``: full audio-video mp4 files; ``audio``: audio-only recordings and any wav/flac."""
    suffix = clip.path.suffix.lower()
    if modality == "audio_video":
        return clip.extra["modality"] == "audio_video" and suffix == VIDEO_SUFFIX
    return clip.extra["modality"] == "audio" or suffix in AUDIO_SUFFIXES


def selection_rule(clip: Clip, modality: str, vocal_channel: str, classes: Sequence[str]) -> str | None:
    """The first selection option that leaves ``clip`` out, as a rule for the report; None when it is kept."""
    if not is_modality(clip, modality):
        return f"not {modality} (modality)"
    if clip.extra["vocal_channel"] != vocal_channel:
        return f"{clip.extra['vocal_channel']} channel, not {vocal_channel} (vocal_channel)"
    return class_rule(clip, classes)


def index(
    root: str | Path,
    *,
    on_error: str = "skip",
    modality: str = "audio_video",
    vocal_channel: str = "speech",
    classes: Sequence[str] = PAPER_EMOTIONS,
) -> IndexResult:
    """Index the recordings of ``modality`` and ``vocal_channel`` whose label is in ``classes``.

    Files left out by these options are listed in ``IndexResult.excluded`` with the rule. A media file
    whose name does not parse, or whose actor folder disagrees with its name, is listed in
    ``IndexResult.skipped`` (``on_error="skip"``) or raises ``CorpusLayoutError`` (``on_error="raise"``).
    """
    check_on_error(on_error)
    if modality not in SELECTABLE_MODALITIES:
        raise ValueError(f"modality must be one of {SELECTABLE_MODALITIES}, got {modality!r}")
    if vocal_channel not in VOCAL_CHANNELS.values():
        raise ValueError(f"vocal_channel must be one of {tuple(VOCAL_CHANNELS.values())}, got {vocal_channel!r}")
    check_classes(classes, EMOTIONS.values(), "RAVDESS")
    root = require_root(root, "RAVDESS")
    scan = scan_media(root, (VIDEO_SUFFIX, *AUDIO_SUFFIXES))
    clips, problems, excluded = sort_files(
        scan.files,
        lambda path: parse_path(path, root),
        lambda clip: selection_rule(clip, modality, vocal_channel, classes),
    )
    expected = (
        f"{EXPECTED_LAYOUT}; selected: modality={modality}, vocal_channel={vocal_channel}, classes={list(classes)}"
    )
    return finish_index(
        clips, problems, scan=scan, excluded=excluded, corpus="RAVDESS", root=root, expected=expected, on_error=on_error
    )
