"""Progress of a run over clips: a tqdm bar on a terminal, a line per tenth of the clips in a log file."""

from __future__ import annotations

import math
import time

from tqdm.auto import tqdm

from datamodules.terminal import interactive_output


class ChunkLines:
    """tqdm's ``update`` and ``close`` for a log file (stdout not a terminal): one line per tenth of the clips."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.chunk = max(1, math.ceil(total / 10))
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.done % self.chunk == 0 or self.done == self.total:
            print(f"{self.desc}: {self.done}/{self.total} clips, {time.perf_counter() - self.start:.0f} s", flush=True)

    def close(self) -> None:
        """Nothing to close: every line is written whole."""


def clip_progress(total: int, desc: str, enabled: bool) -> tqdm | ChunkLines:
    """A tqdm bar on a terminal, ``ChunkLines`` when stdout is a file (a cluster job's log)."""
    if enabled and total and not interactive_output():
        return ChunkLines(total, desc)
    return tqdm(total=total, desc=desc, unit="clip", disable=not enabled or not total)
