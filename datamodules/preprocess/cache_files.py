"""The clip cache on disk: its content key and folder, a clip's cache file, the verdict on a clip that could
not be prepared, and the lock a run holds on a clip while it prepares it.

One clip becomes one cache file ``<cache_dir>/<corpus>/<key>/<clip_id>.pt`` where ``key`` hashes the
preprocessing config (``cache_key``). Several runs may fill one cache at once (array jobs on a shared
filesystem): every file is written whole (``datamodules.atomic``), and a clip is prepared only by the run that
holds its lock (``claim_clip``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch

from datamodules.clips import Clip
from datamodules.preprocess.pipeline import PIPELINE_VERSION

RUN_SETTINGS: tuple[str, ...] = ("max_failed_fraction",)  # how a run behaves, not what a clip holds


# Settings added after caches were made, left out of the key at the value that behaves as before their time, so
# that those caches stay valid: (group, name) -> that value.
KEYLESS_DEFAULTS: dict[tuple[str, str], object] = {("mfcc", "short"): "drop"}


def clip_content(preprocess_cfg: dict) -> dict:
    """The preprocessing values that decide what a cache file holds: all but ``RUN_SETTINGS`` and the
    ``KEYLESS_DEFAULTS`` at their old behaviour's value."""
    content = {name: value for name, value in preprocess_cfg.items() if name not in RUN_SETTINGS}
    for (group, name), value in KEYLESS_DEFAULTS.items():
        settings = content.get(group)
        if isinstance(settings, dict) and name in settings and settings[name] == value:
            content[group] = {key: setting for key, setting in settings.items() if key != name}
    return content


def cache_key(preprocess_cfg: dict, source: str | None = None) -> str:
    """Short hash of the preprocessing config (``clip_content``), the pipeline version and the corpus
    ``source`` (its resolved root), so that two corpora whose clip ids coincide never share cache files."""
    blob = json.dumps(
        {"version": PIPELINE_VERSION, "preprocess": clip_content(preprocess_cfg), "source": source}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cut_source(source: str | None, clips: Iterable[Clip]) -> str | None:
    """``source`` with a hash of the cut of every clip cut out of a longer recording (``Clip.cut``: a table's
    ``start_s`` / ``end_s``), so that changing a cut makes a new cache; ``source`` unchanged when no clip is cut
    (the keys of corpora without cuts stay as they were)."""
    cuts = sorted((clip.clip_id, *clip.cut) for clip in clips if clip.cut is not None)
    if not cuts:
        return source
    digest = hashlib.sha256(json.dumps(cuts).encode()).hexdigest()[:12]
    return f"{source}#cuts={digest}"


def load_clip(path: Path) -> dict:
    """A prepared clip, memory-mapped: tensors are read lazily and shared between DataLoader workers."""
    return torch.load(path, mmap=True, weights_only=True)


def cache_folder(cache_root: str | Path, corpus: str, cfg: dict, source: str | None = None) -> Path:
    """Where the cache files of ``corpus`` under ``cfg`` and ``source`` go: ``<cache_root>/<corpus>/<cache_key>``."""
    return Path(cache_root) / corpus / cache_key(cfg, source)


def file_signature(path: Path) -> list[int] | None:
    """Size, modification and status-change times of ``path`` (links followed); None when it has none.

    A cached verdict holds for the file it was given on: replacing, editing or chmod-ing it changes this.
    """
    try:
        status = os.stat(path)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns]


def verdict_path(clip_file: Path) -> Path:
    """Where the verdict on a clip that could not be prepared is kept, beside where its cache file would be."""
    return clip_file.with_suffix(".dropped.json")


def cached_verdict(clip: Clip, clip_file: Path) -> dict | None:
    """The stored failure of ``clip`` when the file is the one it was found on, else None."""
    path = verdict_path(clip_file)
    if not path.is_file():
        return None
    verdict = json.loads(path.read_text())
    signature = verdict.pop("signature")
    return verdict if signature is not None and signature == file_signature(clip.path) else None


def claim_path(clip_file: Path) -> Path:
    """The lock file of a clip, beside where its cache file goes, while some run prepares it."""
    return clip_file.with_name(f".{clip_file.name}.lock")


@contextmanager
def claim_clip(clip_file: Path, wait: bool) -> Iterator[bool]:
    """Hold the clip's lock (``flock`` on ``claim_path``) for the block; yields False instead of waiting
    when another process holds it and ``wait`` is False.

    Whoever holds the lock prepares the clip and owns its temporary files. The kernel (over NFS, the lock
    manager) releases the lock of a process that dies, so no claim outlives its run. The holder removes
    the lock file before releasing it, so a waiter that then gets the lock of the removed file tries again.
    """
    path = claim_path(clip_file)
    handle = _lock_current(path, wait)
    if handle is None:
        yield False
        return
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def _lock_current(path: Path, wait: bool) -> IO | None:
    """An open handle that holds the lock of the file now at ``path`` (created if missing); None when
    another process holds it and ``wait`` is False."""
    while True:
        handle = open(path, "a")  # noqa: SIM115 (the lock lives as long as the open handle)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        if _is_current(handle, path):
            return handle
        handle.close()


def _is_current(handle: IO, path: Path) -> bool:
    """Whether the open ``handle`` is still the file at ``path`` (not removed or replaced since it was opened)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (opened.st_dev, opened.st_ino) == (status.st_dev, status.st_ino)


def remove_stale_temporaries(folder: Path, clip_files: Iterable[Path]) -> None:
    """Delete the temporary files a killed run left for ``clip_files`` (cache files and verdicts): those of
    clips whose lock is free, since a live writer holds its clip's lock. A run's other temporary files
    (report.json, preprocess.json) are left: another run may be writing them."""
    owners = {name: clip_file for clip_file in clip_files for name in (clip_file.name, verdict_path(clip_file).name)}
    for tmp in folder.glob(".*.tmp"):
        clip_file = owners.get(tmp.name[1:].rsplit(".", 2)[0])
        if clip_file is None:
            continue
        with claim_clip(clip_file, wait=False) as held:
            if held:
                tmp.unlink(missing_ok=True)
