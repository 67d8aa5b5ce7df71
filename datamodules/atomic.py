"""Files written whole or not at all: a temporary name in the same folder, then a rename.

The lowest layer of the project's file writing (caches, reports, checkpoints): it imports nothing from the
project.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file in the same folder, then rename it: readers never see a partial file.

    The temporary name ``.<name>.<host>-<pid>.tmp`` is unique to the writing process, also across the nodes
    of a cluster sharing one filesystem."""
    writer = f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"
    tmp = path.with_name(f".{path.name}.{writer}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` with no partial file left behind (see ``_write_atomically``)."""
    _write_atomically(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: Path) -> None:
    """``Path.write_text`` with no partial file left behind (see ``_write_atomically``)."""
    _write_atomically(Path(path), lambda tmp: tmp.write_text(text))
