"""Two real DDP processes (CPU, gloo) test a checkpoint exactly as one process does.

The checkpoint is trained in one process; ``train.py test_only=true trainer=ddp trainer.devices=2`` then
tests it with Lightning's subprocess launcher (train.py re-run as rank 1). The test segments are split
over the ranks by DistributedSampler, padded with a duplicate (23 segments on 2 ranks), gathered and
deduplicated before the video-level vote: the confusion matrices and accuracies must be identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO
from tracking.wandb_offline import find_offline_runs, read_offline_run

FOLD = 2  # its 23 test segments do not split evenly over 2 ranks, so the sampler pads


def train_py(args: list[str]) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "AVER_AGENT_"))}
    environ["WANDB_MODE"] = "offline"
    result = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=600
    )
    command = " ".join(args)
    assert result.returncode == 0, f"train.py {command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.mark.slow
def test_two_process_test_of_a_checkpoint_equals_the_one_process_test(tiny_demo, tmp_path):
    common = [
        *tiny_demo,
        f"paths.output_dir={tmp_path}",
        "stage=audio",
        f"fold={FOLD}",
        "model.audio.module.backbone.fc_dim=32",
    ]
    train_py([*common, "model.audio.trainer.max_epochs=6", "model.audio.module.lr=0.003"])
    fold_dir = tmp_path / "demo" / "loso" / "audio" / f"fold_{FOLD}"
    single = json.loads((fold_dir / "metrics.json").read_text())
    shutil.copy(fold_dir / "metrics.json", tmp_path / "single_process_metrics.json")
    checkpoint_bytes = (fold_dir / "checkpoints" / "best.ckpt").read_bytes()
    assert single["test"]["n_segments"] % 2 == 1, "the 2-rank split must need DistributedSampler padding"

    result = train_py(
        [
            *common,
            "test_only=true",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "trainer.sync_batchnorm=false",
            "verbose=true",  # Lightning's own lines, which name the processes and the backend
        ]
    )
    log = result.stdout + result.stderr
    assert "Starting with 2 processes" in log and "distributed_backend=gloo" in log
    double = json.loads((fold_dir / "metrics.json").read_text())
    assert (fold_dir / "checkpoints" / "best.ckpt").read_bytes() == checkpoint_bytes  # tested, not retrained
    assert (fold_dir / "test_config.yaml").exists()

    for split in ("val", "test"):
        assert double[split]["n_segments"] == single[split]["n_segments"]  # the padded duplicate was dropped
        assert double[split]["n_clips"] == single[split]["n_clips"]
        for level in ("segment", "video"):
            assert double[split][level]["confusion_matrix"] == single[split][level]["confusion_matrix"]
            for name in ("accuracy", "uar", "macro_f1"):
                assert double[split][level][name] == single[split][level][name]
        assert double[split]["segment"]["loss"] == pytest.approx(single[split]["segment"]["loss"], rel=1e-5)
    assert double["objective"]["value"] == pytest.approx(single["objective"]["value"])

    # rank zero alone logged: one W&B run for the training, one for the 2-process test, same matrices
    runs = [read_offline_run(path) for path in find_offline_runs(fold_dir / "wandb")]
    assert len(runs) == 2
    tables = [run.table("test/video_confusion_matrix_table") for run in runs]
    assert tables[0] == tables[1]
    assert runs[0].summary["test/video_acc"] == runs[1].summary["test/video_acc"]
