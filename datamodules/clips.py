"""The clip table every corpus indexer produces."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PAPER_EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")


@dataclass(frozen=True)
class Clip:
    """One recording: the unit that folds, caches and video-level votes are made of."""

    clip_id: str  # unique within a corpus, filesystem-safe (used as the cache file name)
    path: Path
    subject: str
    label: str  # one of the corpus's class names, e.g. PAPER_EMOTIONS
    extra: dict = field(default_factory=dict, compare=False, hash=False)


class CorpusLayoutError(ValueError):
    """Raised when a corpus root holds file names that do not parse."""


class NoClipsError(CorpusLayoutError):
    """Raised when a corpus root holds no clip of the corpus's layout at all."""


@dataclass
class IndexResult:
    """What an indexer found: the clips, the paths it skipped with the reason for each, and notes.

    ``notes`` are facts about the corpus worth reporting that did not cost a clip (a subject lacking
    an emotion, a folder name that disagrees with the file name, files left out by an option).
    """

    clips: list[Clip]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    notes: list[str] = field(default_factory=list)
