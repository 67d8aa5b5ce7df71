"""Errors the project expects print their message without a traceback; Ctrl-C or SIGTERM stops a run with one
line and a status of 128 + the signal, and rerunning the command resumes it."""

from __future__ import annotations

import os
import signal

import pytest

from runner.interrupt import STOPPED
from tests.helpers.configs import TINY_MODELS
from tests.helpers.processes import epochs_done, failing_train_py, finish, train_py

EPOCHS = 4


def test_an_expected_error_prints_its_message_without_a_traceback(tiny_demo, tmp_path):
    stderr = failing_train_py([*tiny_demo, "stage=fusion", "fold=0", f"paths.output_dir={tmp_path}", "logger=none"])
    assert stderr.startswith("error: stage=fusion fold=0 needs the audio and visual extractor checkpoint(s) ")
    assert "python train.py" in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_sigterm_stops_a_run_in_one_line_and_the_rerun_resumes(tiny_demo, tmp_path):
    command = [
        *tiny_demo,
        *TINY_MODELS,
        "stage=audio",
        "fold=0",
        f"model.audio.trainer.max_epochs={EPOCHS}",
        f"paths.output_dir={tmp_path}",
        "logger=none",
        "data.num_workers=2",
    ]
    last = tmp_path / "demo" / "loso" / "audio" / "fold_0" / "checkpoints" / "last.ckpt"
    process = train_py(command)
    while epochs_done(last) < 1:
        assert process.poll() is None, f"train.py ended before its first epoch was saved:\n{finish(process)}"
    os.kill(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert output.rstrip().endswith(STOPPED) and output.count(STOPPED) == 1, output[-3000:]
    assert "Traceback" not in output and "killed by signal" not in output, output[-3000:]
    done = epochs_done(last)
    assert 1 <= done < EPOCHS, "the signal must land in the middle of the fold's training"
    assert f"demo/loso/audio/fold_0: resuming from checkpoints/last.ckpt ({done} epochs done)" in finish(
        train_py(command)
    )
