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


BALANCED_DDP_SCRIPT = """
import json
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.datamodule import class_balanced_sampler

labels = torch.tensor([0] * 900 + [1] * 100)


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 2)
        self.seen = []

    def training_step(self, batch, index):
        self.seen += batch[1].tolist()
        return self.layer(batch[0]).sum()

    def on_train_epoch_end(self):
        sampler = type(self.trainer.train_dataloader.sampler).__name__
        with open(f"{sys.argv[1]}/rank{self.global_rank}.json", "w") as out:
            json.dump({"sampler": sampler, "labels": self.seen}, out)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), 0.1)


if __name__ == "__main__":
    L.seed_everything(0)
    data = TensorDataset(torch.randn(1000, 1), labels)
    loader = DataLoader(data, batch_size=50, sampler=class_balanced_sampler(labels))
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False, enable_checkpointing=False
    )
    trainer.fit(Recorder(), train_dataloaders=loader)
"""


@pytest.mark.slow
def test_class_balanced_draws_are_split_between_two_ddp_processes(tmp_path):
    """data.balance=classes under real DDP (2 CPU processes): Lightning wraps the sampler so that each rank trains
    on half of the epoch's draws, and the rare class (10 % of the segments) is drawn about as often as the other."""
    script = tmp_path / "balanced_ddp.py"
    script.write_text(BALANCED_DDP_SCRIPT)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "AVER_AGENT_"))}
    environ["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [rank["sampler"] for rank in ranks] == ["DistributedSamplerWrapper"] * 2
    assert [len(rank["labels"]) for rank in ranks] == [500, 500]
    rare = sum(sum(rank["labels"]) for rank in ranks) / 1000
    assert 0.4 < rare < 0.6  # shuffled, 0.10
