"""Index the Extended Cohn-Kanade database (CK+; Lucey et al., 2010): posed facial expressions, no audio.

A clip is one image sequence (neutral to the expression's apex) and the subject is ``S###``. Two layouts:

* the **distribution**: ``cohn-kanade-images/S005/001/S005_001_00000001.png`` ... and, anywhere under the
  root (the distribution's ``Emotion/`` folder), ``S005/001/S005_001_000000NN_emotion.txt`` holding one
  float, the label of the sequence: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness,
  7 surprise. Only labelled sequences are clips; with ``neutral`` among the classes each labelled sequence
  also gives a one-frame neutral clip, its first frame (the usual CK+ practice);
* **CK+48**: ``<emotion>/S###_###_########.png``, 48x48 face crops of the last frames of each sequence,
  one folder per emotion (anger, contempt, disgust, fear, happy, sadness, surprise; neutral when present).

Frames are the sequence's files in frame-number order (``Clip.extra["frames"]``); ``Clip.path`` is the
last of them (the apex; a neutral clip's is the first frame). ``happy`` is named ``happiness``, as in the
paper's classes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from datamodules.clips import PAPER_EMOTIONS, Clip, IndexResult, class_rule
from datamodules.corpora import (
    MediaScan,
    Problem,
    check_classes,
    check_on_error,
    finish_index,
    require_root,
    scan_media,
)

EMOTIONS: dict[int, str] = {
    0: "neutral",
    1: "anger",
    2: "contempt",
    3: "disgust",
    4: "fear",
    5: "happiness",
    6: "sadness",
    7: "surprise",
}
EMOTION_FOLDERS: dict[str, str] = {**{label: label for label in EMOTIONS.values()}, "happy": "happiness"}
FRAME_SUFFIX = ".png"
IMAGES_FOLDER = "cohn-kanade-images"
EXPECTED_LAYOUT = (
    f"the CK+ distribution, {IMAGES_FOLDER}/S###/###/S###_###_########.png with labels "
    "S###_###_########_emotion.txt (one float 0-7) anywhere under the root, or CK+48, "
    f"<emotion>/S###_###_########.png with emotion in {', '.join(sorted(EMOTION_FOLDERS))}"
)
_FRAME_STEM = re.compile(r"(S\d{3})_(\d{3})_(\d{8})")
_LABEL_NAME = re.compile(r"(S\d{3})_(\d{3})_\d{8}_emotion\.txt")

SequenceKey = tuple[str, str]  # (subject S###, sequence ###)


def parse_frame(path: Path, root: Path) -> tuple[SequenceKey, int, str | None]:
    """(subject, sequence), frame number and, for CK+48, the emotion folder's class of one image file;
    ``ValueError`` with the reason when its path fits neither layout."""
    match = _FRAME_STEM.fullmatch(path.stem)
    if match is None:
        raise ValueError(f"file name {path.name!r} is not S###_###_########.png (subject, sequence, frame)")
    subject, sequence, frame = match.groups()
    folders = path.relative_to(root).parts[:-1]
    if IMAGES_FOLDER in folders:
        if folders[-2:] != (subject, sequence):
            raise ValueError(f"frame {path.name!r} is not in its sequence folder {subject}/{sequence}")
        return (subject, sequence), int(frame), None
    emotion = path.parent.name.lower()
    if emotion not in EMOTION_FOLDERS:
        raise ValueError(
            f"folder {path.parent.name!r} is neither an emotion ({', '.join(sorted(EMOTION_FOLDERS))}) nor under "
            f"{IMAGES_FOLDER}/"
        )
    return (subject, sequence), int(frame), EMOTION_FOLDERS[emotion]


def read_labels(root: Path) -> tuple[dict[SequenceKey, str], list[str]]:
    """The distribution's sequence labels, from every ``*_emotion.txt`` under ``root``, and a note on each
    label file that does not hold one of the codes 0-7 (its sequence is then unlabelled)."""
    labels, notes = {}, []
    for path in sorted(root.rglob("*_emotion.txt")):
        match = _LABEL_NAME.fullmatch(path.name)
        if match is None or path.name.startswith("."):
            continue
        try:
            code = float(path.read_text().strip())
        except (OSError, ValueError) as error:
            notes.append(f"{path}: label file does not hold one number ({error})")
            continue
        if code not in EMOTIONS:
            notes.append(f"{path}: label {code:g} is not one of the codes 0-7")
            continue
        labels[match.groups()] = EMOTIONS[int(code)]
    return labels, notes


def sequence_clips(
    key: SequenceKey,
    frames: list[Path],
    label: str | None,
    last_frames: int | None,
    classes: Sequence[str],
    *,
    whole_sequence: bool,
) -> list[tuple[Clip, str | None]]:
    """The clips of one sequence (its frames in order), each with the rule that leaves it out or None.

    A labelled sequence is a clip of its label (its ``last_frames`` frames, all with None); with
    ``neutral`` among ``classes``, a ``whole_sequence`` (the distribution's, which starts neutral)
    labelled with an emotion also gives a one-frame neutral clip of its first frame. An unlabelled
    sequence is left out with that rule.
    """
    subject, sequence = key
    if label is None:
        clip = Clip(f"{subject}_{sequence}", frames[-1], subject, "unlabelled", {"frames": tuple(frames)})
        return [(clip, "unlabelled sequence (no S###_###_*_emotion.txt)")]
    kept = frames[-last_frames:] if last_frames else frames
    clip = Clip(f"{subject}_{sequence}", kept[-1], subject, label, {"frames": tuple(kept), "sequence": sequence})
    clips = [(clip, class_rule(clip, classes))]
    if whole_sequence and "neutral" in classes and label != "neutral" and len(frames) > 1:
        neutral = Clip(
            f"{subject}_{sequence}_neutral",
            frames[0],
            subject,
            "neutral",
            {"frames": (frames[0],), "sequence": sequence},
        )
        clips.append((neutral, None))
    return clips


def group_sequences(
    scan: MediaScan, root: Path
) -> tuple[dict[SequenceKey, list[Path]], dict[SequenceKey, str], list[Problem]]:
    """The image files grouped by sequence in frame order, the CK+48 folders' labels, and the files whose
    path does not parse or whose sequence lies in two emotion folders."""
    frames: dict[SequenceKey, list[tuple[int, Path]]] = defaultdict(list)
    folder_labels: dict[SequenceKey, str] = {}
    problems: list[Problem] = []
    for path in scan.files:
        try:
            key, number, folder_label = parse_frame(path, root)
        except ValueError as reason:
            problems.append((path, str(reason)))
            continue
        if folder_label is not None and folder_labels.setdefault(key, folder_label) != folder_label:
            problems.append((path, f"sequence {'_'.join(key)} is also under {folder_labels[key]}/"))
            continue
        frames[key].append((number, path))
    return {key: [path for _, path in sorted(found)] for key, found in frames.items()}, folder_labels, problems


def index(
    root: str | Path,
    *,
    on_error: str = "skip",
    classes: Sequence[str] = PAPER_EMOTIONS,
    last_frames: int | None = None,
) -> IndexResult:
    """Index the labelled sequences of either layout whose label is in ``classes``.

        ``last_frames``: keep only the last N frames of each sequence (the apex; CK+48 holds the last 3),
        None the whole sequence. Sequences without a label or of another class are listed in
        ``IndexResult.excluded``; image files whose path fits neither layout in
        ``IndexResult.skipped`` (``on_error="skip"``) or raise ``CorpusLayoutError``; label files that hold no
    code 0-7 are noted (``IndexResult.notes``) and their sequences left out as unlabelled.
        The frames of a clip or excluded sequence other than its ``Clip.path`` are counted in ``further_frames``.
    """
    check_on_error(on_error)
    check_classes(classes, EMOTIONS.values(), "CK+")
    if last_frames is not None and last_frames < 1:
        raise ValueError(f"last_frames must be >= 1 or None, got {last_frames}")
    root = require_root(root, "CK+")
    scan = scan_media(root, (FRAME_SUFFIX,))
    sequences, folder_labels, problems = group_sequences(scan, root)
    labels, notes = read_labels(root)
    clips, excluded = [], []
    for key, frames in sequences.items():
        label = folder_labels.get(key, labels.get(key))
        whole = key not in folder_labels
        for clip, rule in sequence_clips(key, frames, label, last_frames, classes, whole_sequence=whole):
            if rule:
                excluded.append((clip.path, rule))
            else:
                clips.append(clip)
    named = {clip.path for clip in clips} | {path for path, _ in excluded}
    result = finish_index(
        clips,
        problems,
        scan=scan,
        excluded=excluded,
        corpus="CK+",
        root=root,
        expected=f"{EXPECTED_LAYOUT}; selected classes={list(classes)}",
        on_error=on_error,
        notes=notes,
    )
    result.further_frames = sum(len(frames) for frames in sequences.values()) - len(named)
    return result
