"""Running the entry points as a user does: subprocesses with a clean environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers.paths import REPO

TINY_AUDIO = {"model.audio.module.backbone.fc_dim": 32, "model.audio.trainer.max_epochs": 1}


def clean_environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "AVER_AGENT_"))}
    return {**environ, "WANDB_MODE": "offline", **extra}


def run_checked(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def prepare_command(root: Path, cache: Path, workers: int) -> list[str]:
    """``python prepare.py`` of the RAVDESS-layout corpus at ``root`` into ``cache``, with ``workers`` processes."""
    return [
        sys.executable,
        "prepare.py",
        "experiment=paper_ravdess_kfold",
        f"data.root={root}",
        f"paths.cache_dir={cache}",
        f"data.preprocess_workers={workers}",
        "vad_plots=0",
    ]


def processed_now(output: str) -> int:
    """How many clips one prepare.py run prepared itself (its report's ``processed now``)."""
    return int(re.search(r"(\d+) processed now", output).group(1))


def failing_train_py(args: list[str], **env: str) -> str:
    """stderr of ``python train.py <args>``, which must fail with status 1."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))} | env
    result = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, f"train.py {' '.join(args)} did not fail:\n{result.stdout[-2000:]}{result.stderr}"
    return result.stderr


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, f"expected one line, got:\n{stderr}"
    return lines[0]


def train_py(args: list[str]) -> subprocess.Popen:
    """``python train.py <args>`` in its own process group, W&B offline, output to a pipe."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "AVER_AGENT_"))}
    environ["WANDB_MODE"] = "offline"
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"train.py failed:\n{output[-5000:]}"
    return output


def epochs_done(checkpoint: Path) -> int:
    """Epochs trained by a checkpoint; 0 while there is none (it is written atomically, so never partial)."""
    if not checkpoint.exists():
        return 0
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"] + 1
