"""Whether progress is shown to a person at a terminal or written to a log file.

Every progress output (training's bar, preprocessing's and prediction's clip counts) asks ``interactive_output``:
a bar redrawn in place reads well on a terminal, and a log file (a SLURM job, ``nohup``, ``> log``) wants
whole lines instead. The lowest layer: it imports nothing from the project.
"""

from __future__ import annotations

import sys
from typing import IO


def interactive_output(interactive: bool | None = None, stream: IO | None = None) -> bool:
    """``interactive`` when given, else whether ``stream`` is a terminal (None: ``sys.stdout`` as it is at the
    call, so that a redirected or replaced stdout counts)."""
    if interactive is not None:
        return interactive
    return (sys.stdout if stream is None else stream).isatty()
