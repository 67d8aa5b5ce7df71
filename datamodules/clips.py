"""The clip table every corpus indexer produces."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    # a clip cut out of a longer recording: seconds from its start, applied when it is decoded (None: whole)
    start_s: float | None = None
    end_s: float | None = None

    @property
    def cut(self) -> tuple[float, float | None] | None:
        """The span of the recording the clip is, (start, end or None for the recording's end); None: all of it."""
        if self.start_s is None and self.end_s is None:
            return None
        return (self.start_s or 0.0, self.end_s)


def class_rule(clip: Clip, classes: Sequence[str]) -> str | None:
    """Why ``clip`` is left out when only ``classes`` are chosen, or None when it is kept."""
    return None if clip.label in classes else f"class {clip.label} not in classes"


class CorpusLayoutError(ValueError):
    """Raised when a corpus root holds file names that do not parse."""


class NoClipsError(CorpusLayoutError):
    """Raised when a corpus root holds no clip of the corpus's layout at all."""


@dataclass
class IndexResult:
    """What an indexer found under a root: every file is a clip, excluded, skipped or another file.

    ``excluded`` are recordings left out by a selection option (a class not in ``classes``, another
    modality), with the rule; ``skipped`` are recordings the indexer could not use (a name that does not
    parse, a broken link), with the reason; ``other_files`` counts the files that are no recordings by
    their name (other extensions, hidden files); ``further_frames`` counts the frame files of image-sequence
    clips (and excluded sequences) other than the one that is the clip's ``path``. ``notes`` are facts about
    the corpus worth reporting that did not cost a clip (a subject lacking an emotion, a folder name that
    disagrees with the file name).
    """

    clips: list[Clip]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (path, selection rule)
    other_files: int = 0
    notes: list[str] = field(default_factory=list)
    further_frames: int = 0

    @property
    def files_found(self) -> int:
        """Every file under the root: clips, excluded, skipped, other files and further frames of sequences."""
        return len(self.clips) + len(self.excluded) + len(self.skipped) + self.other_files + self.further_frames

    def exclude(self, rule: Callable[[Clip], str | None]) -> None:
        """Move the clips for which ``rule`` names a reason to ``excluded``, with that reason."""
        reasons = [rule(clip) for clip in self.clips]
        self.excluded += [(str(clip.path), reason) for clip, reason in zip(self.clips, reasons) if reason]
        self.clips = [clip for clip, reason in zip(self.clips, reasons) if not reason]
