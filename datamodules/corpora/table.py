"""What the corpora without code share (``manifest``: a table of clips; ``pattern`` and ``folder``: file names):
mapping a corpus's labels onto class names (``label_map``), the media a path points at, and the clip it makes.

A path decides the modality as for the built-in corpora: a video file (with or without audio) or an audio file is
decoded by FFmpeg; a folder of images is an image sequence (its images in natural order, as CK+'s) and a single
image a one-frame clip, both through ``Clip.extra["frames"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from datamodules.clips import PAPER_EMOTIONS, Clip
from datamodules.corpora import natural_key, normalise_extension, safe_id

# Class names every built-in corpus uses; a label that is one of them (or of ``classes``) needs no map.
KNOWN_CLASSES: tuple[str, ...] = (*PAPER_EMOTIONS, "neutral", "calm", "boredom", "contempt")
AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aiff")
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".flv", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm")
MEDIA_SUFFIXES: tuple[str, ...] = AUDIO_SUFFIXES + VIDEO_SUFFIXES + IMAGE_SUFFIXES
RESERVED_EXTRA: tuple[str, ...] = ("frames",)  # keys of Clip.extra the pipeline reads


def check_label_map(label_map: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """``label_map`` as a plain dict of strings (None: a label dropped on purpose); ``ValueError`` otherwise."""
    if label_map is None:
        return {}
    if not isinstance(label_map, Mapping):
        raise ValueError(f"label_map must map the corpus's labels to class names, got {label_map!r}")
    mapped: dict[str, str | None] = {}
    for raw, name in label_map.items():
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"label_map: label {raw!r} maps to {name!r}, not a class name (or null to drop it)")
        mapped[str(raw)] = name
    return mapped


def map_label(raw: str, label_map: Mapping[str, str | None], classes: Sequence[str]) -> tuple[str, str | None]:
    """The class name of the corpus label ``raw`` and the rule that leaves it out (None when it is kept).

    ``ValueError`` for a label that ``label_map`` does not name and that is no class name (``classes``, or one of
    ``KNOWN_CLASSES``): a typo or a label the map forgot must not become a class of its own.
    """
    if raw in label_map:
        name = label_map[raw]
        if name is None:
            return raw, f"label {raw} mapped to null (label_map)"
    elif raw in classes or raw in KNOWN_CLASSES:
        name = raw
    else:
        hint = f"label_map names {', '.join(map(repr, label_map))}" if label_map else "there is no label_map"
        raise ValueError(f"unknown label {raw!r}: {hint}, and it is no class name; add it to data.indexer.label_map")
    return name, None if name in classes else f"class {name} not in classes"


def image_frames(path: Path) -> tuple[Path, ...]:
    """The frames of an image clip: a single image, or a folder's images (hidden ones aside) in natural order;
    ``ValueError`` for a folder without images."""
    if path.is_file():
        return (path,)
    images = [
        child
        for child in path.iterdir()
        if child.is_file() and not child.name.startswith(".") and child.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not images:
        raise ValueError(f"folder {path} holds no image ({', '.join(IMAGE_SUFFIXES)}): no frames to read")
    return tuple(sorted(images, key=lambda image: natural_key(image.name)))


def is_image(path: Path) -> bool:
    return path.is_dir() or normalise_extension(path.suffix) in IMAGE_SUFFIXES


def media_extra(path: Path) -> dict:
    """What ``Clip.extra`` needs for the pipeline to read ``path``: the frames of an image clip; nothing else."""
    return {"frames": image_frames(path)} if is_image(path) else {}


def default_clip_id(relative: str, start_s: float | None = None, end_s: float | None = None) -> str:
    """A filesystem-safe clip id from the path below the corpus root (without its extension) and the cut times."""
    stem = relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative
    times = "" if start_s is None and end_s is None else f"_{_seconds(start_s or 0.0)}-{_seconds(end_s)}"
    return safe_id(stem.replace("/", "_") + times) or "clip"


def _seconds(value: float | None) -> str:
    return "end" if value is None else f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def table_clip(
    clip_id: str,
    path: Path,
    subject: str,
    label: str,
    extra: Mapping,
    start_s: float | None = None,
    end_s: float | None = None,
) -> Clip:
    """The clip of one row or file; the corpus's own fields (``extra``) first, the pipeline's frames over them."""
    fields = {key: value for key, value in extra.items() if key not in RESERVED_EXTRA}
    return Clip(clip_id, path, subject, label, {**fields, **media_extra(path)}, start_s=start_s, end_s=end_s)
