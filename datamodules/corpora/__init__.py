"""Corpus indexers: each module's ``index(root, *, on_error="skip"|"raise", ...) -> IndexResult``.

The helpers here are what the indexers share: finding media files under a root (symbolic links
followed), turning the
files that did not parse into a ``CorpusLayoutError`` or into ``IndexResult.skipped``, rejecting
duplicate clip ids, and the natural (subject, label, clip_id) sort order.
"""

from __future__ import annotations

import importlib
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from datamodules.clips import Clip, CorpusLayoutError, IndexResult, NoClipsError

CORPORA: tuple[str, ...] = ("rml", "enterface", "ravdess", "demo", "emodb", "ck", "manifest", "pattern")
ON_ERROR_CHOICES: tuple[str, ...] = ("skip", "raise")
_MAX_LISTED_PROBLEMS = 10
_UNSAFE_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")

Problem = tuple[Path, str]  # (offending path, reason)

# The two-letter emotion codes of RML and eNTERFACE'05 file names.
EMOTION_CODES: dict[str, str] = {
    "an": "anger",
    "di": "disgust",
    "fe": "fear",
    "ha": "happiness",
    "sa": "sadness",
    "su": "surprise",
}


def get_indexer(corpus: str) -> Callable[..., IndexResult]:
    """The ``index`` function of the corpus module named ``corpus`` (one of ``CORPORA``)."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; known corpora: {', '.join(CORPORA)}")
    return importlib.import_module(f"{__name__}.{corpus}").index


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


def check_classes(classes: Iterable[str], known: Iterable[str], corpus: str) -> None:
    """A ``ValueError`` naming the class names of ``classes`` that ``corpus`` does not have, and the known ones."""
    known = list(known)
    unknown = [label for label in classes if label not in known]
    if unknown:
        raise ValueError(f"unknown {corpus} classes {unknown}; known: {', '.join(known)}")


def require_root(root: str | Path, corpus: str) -> Path:
    """``root`` as a Path, or a clear error naming it when it is missing or not a folder."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{corpus} corpus root {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{corpus} corpus root {root} is not a folder")
    return root


@dataclass
class MediaScan:
    """The files under a corpus root, sorted: recordings by their extension, what could not be used, the rest."""

    files: list[Path]  # recordings by extension, symbolic links followed
    unusable: list[Problem]  # links to nothing with a recording's extension, folders that cannot be read
    other_files: int  # files that are no recordings by name: other extensions, hidden files


def walk_files(root: Path, on_error: Callable[[OSError], object]) -> Iterator[Path]:
    """Every file (and link to nothing) under ``root``, following links to files and folders; a folder
    that cannot be listed goes to ``on_error``.

    A folder reached a second time (a cyclic link, two links to one folder) is not entered again.
    """
    entered: set[tuple[int, int]] = set()
    for folder, subfolders, names in os.walk(root, onerror=on_error, followlinks=True):
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in entered:
            subfolders.clear()
            continue
        entered.add((status.st_dev, status.st_ino))
        yield from (Path(folder) / name for name in names)


def scan_media(root: Path, extensions: Iterable[str]) -> MediaScan:
    """The files under ``root`` whose suffix is one of ``extensions`` (case-insensitive), and the rest.

    Hidden files are no recordings: archives unpacked on macOS carry ``._an1.avi`` resource forks.
    """
    suffixes = {normalise_extension(extension) for extension in extensions}
    files, unusable, other = [], [], 0
    unlisted: list[OSError] = []
    for path in sorted(walk_files(root, unlisted.append)):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if hidden or path.suffix.lower() not in suffixes:
            other += 1
        elif path.is_file():
            files.append(path)
        else:
            unusable.append((path, f"broken symbolic link (its target {os.readlink(path)} does not exist)"))
    unusable += [
        (Path(error.filename), f"folder not readable ({error.strerror}): the files in it are not indexed")
        for error in unlisted
    ]
    return MediaScan(files, unusable, other)


def sort_files(
    paths: Iterable[Path], parse: Callable[[Path], Clip], rule: Callable[[Clip], str | None] = lambda clip: None
) -> tuple[list[Clip], list[Problem], list[Problem]]:
    """``paths`` parsed into clips, problems (the ``ValueError`` of ``parse``) and the clips a selection
    ``rule`` leaves out (path, rule)."""
    clips: list[Clip] = []
    problems: list[Problem] = []
    excluded: list[Problem] = []
    for path in paths:
        try:
            clip = parse(path)
        except ValueError as reason:
            problems.append((path, str(reason)))
            continue
        left_out_by = rule(clip)
        if left_out_by:
            excluded.append((path, left_out_by))
        else:
            clips.append(clip)
    return clips, problems, excluded


def normalise_extension(extension: str) -> str:
    """``"AVI"``, ``"avi"`` and ``".avi"`` all become ``".avi"``."""
    return "." + extension.lower().lstrip(".")


def safe_id(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9_.-]`` replaced by ``-``."""
    return _UNSAFE_ID_CHARACTERS.sub("-", text).strip("-")


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value: ``s2`` before ``s10``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


def clip_sort_key(clip: Clip) -> tuple:
    return natural_key(clip.subject), clip.label, natural_key(clip.clip_id)


def duplicate_id_problems(clips: list[Clip]) -> tuple[list[Clip], list[Problem]]:
    """Keep the first clip (in path order) of every clip id; the others become problems."""
    by_id: dict[str, list[Clip]] = defaultdict(list)
    for clip in sorted(clips, key=lambda clip: natural_key(str(clip.path))):
        by_id[clip.clip_id].append(clip)
    kept = [same_id[0] for same_id in by_id.values()]
    problems = [
        (duplicate.path, f"clip id {clip_id!r} is already taken by {same_id[0].path}")
        for clip_id, same_id in by_id.items()
        for duplicate in same_id[1:]
    ]
    return kept, problems


def finish_index(
    clips: list[Clip],
    problems: list[Problem],
    *,
    scan: MediaScan,
    corpus: str,
    root: Path,
    expected: str,
    on_error: str,
    excluded: list[Problem] | None = None,
    notes: list[str] | None = None,
) -> IndexResult:
    """Raise for ``problems`` (and the scan's unusable paths) or record them as skipped, then sort the clips.

    ``excluded`` are the recordings a selection option left out, with the rule. ``expected`` describes
    the file layout the indexer understands; it goes into every error. An index with no clips at all is
    an error in both modes: nothing downstream can use it.
    """
    clips, duplicates = duplicate_id_problems(clips)
    problems = sorted(problems + scan.unusable + duplicates, key=lambda problem: natural_key(str(problem[0])))
    excluded = sorted(excluded or [], key=lambda item: natural_key(str(item[0])))
    if problems and on_error == "raise":
        raise CorpusLayoutError(_problem_message(problems, corpus=corpus, root=root, expected=expected))
    if not clips:
        details = [f"{len(problems)} file(s) skipped as unparseable"] if problems else []
        left_out = Counter(rule for _, rule in excluded)
        details += [f"left out {count} file(s): {rule}" for rule, count in sorted(left_out.items())]
        found = f" ({'; '.join(details + list(notes or []))})" if details or notes else ""
        raise NoClipsError(f"no {corpus} clips found under {root}{found}; expected {expected}")
    return IndexResult(
        clips=sorted(clips, key=clip_sort_key),
        skipped=[(str(path), reason) for path, reason in problems],
        excluded=[(str(path), rule) for path, rule in excluded],
        other_files=scan.other_files,
        notes=list(notes or []),
    )


def _problem_message(problems: list[Problem], *, corpus: str, root: Path, expected: str) -> str:
    listed = "\n".join(f"  {path}: {reason}" for path, reason in problems[:_MAX_LISTED_PROBLEMS])
    more = len(problems) - _MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return (
        f"{len(problems)} file(s) under {corpus} corpus root {root} do not fit the expected layout "
        f"{expected}:\n{listed}{tail}\n(pass on_error='skip' to index the rest and list these as skipped)"
    )
