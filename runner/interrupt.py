"""Ctrl-C or SIGTERM (a scheduler's, ``kill``) stops a run with one line: rerunning the command resumes it.

While a ``Trainer`` runs, Lightning's own SIGTERM handler (which calls the one installed before it, this one)
stops the loop between two batches (``SIGTERMException``, after its callbacks' ``on_exception``); this
handler then only records the signal. Elsewhere (indexing, preprocessing) and for Ctrl-C it raises
``KeyboardInterrupt`` in the main process, which Lightning's ``Trainer`` handles the same way. A checkpoint is
written to a temporary file and renamed (``runner.resume.AtomicCheckpointIO``), so ``last.ckpt`` is the last
whole epoch. DataLoader workers, forked with the handler, leave the signal to the main process: it shuts them
down, and none dies by the signal to be reported as ``DataLoader worker ... is killed by signal``. Other child
processes (preprocessing workers) keep the signal's default action.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from torch.utils.data import get_worker_info

STOPPED = "stopped; rerun the same command to resume"
STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGINT or SIGTERM in the block ends the process with ``STOPPED`` on stderr and status 128 + the signal
    (130, 143), without a traceback; a second signal while the run stops is ignored."""
    main = os.getpid()
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main:
            if get_worker_info() is None:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if received:
            return
        received.append(signum)
        if signal.getsignal(signum) is handler:
            raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, handler) for signum in STOPPING_SIGNALS}
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        if not received:
            raise
        print(STOPPED, file=sys.stderr)
        sys.exit(128 + received[0])
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)
