"""The errors the project raises on purpose end a run with their message, without a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from datamodules.clips import CorpusLayoutError
from datamodules.decode import BadInputError
from datamodules.preprocess.corpus import TooManyFailuresError
from runner.command_line import ConfigError
from runner.fold_files import MismatchedCheckpointError, MissingCheckpointError
from runner.loop import MismatchedFoldsError, MissingFoldsError

# raised on purpose, each with a message that says what to do: a mistake in the command or the config, a corpus
# root without clips of its layout, a bad recording, too many clips failing to prepare, a stage or summary asked
# for before the runs it builds on, or checkpoints of another setting
EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    CorpusLayoutError,
    BadInputError,
    TooManyFailuresError,
    MissingCheckpointError,
    MismatchedCheckpointError,
    MissingFoldsError,
    MismatchedFoldsError,
)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """An expected error (``EXPECTED_ERRORS``) in the block ends the process with its message as one line on
    stderr (status 1); with ``HYDRA_FULL_ERROR=1`` it is raised, traceback and all."""
    try:
        yield
    except EXPECTED_ERRORS as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {error}")
