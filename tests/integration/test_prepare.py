"""prepare.py prepares the cache that train.py with the same command line reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO


def test_prepare_fills_the_cache_that_training_reads(generated_ravdess, tmp_path):
    """``prepare.py`` takes train.py's command line: ``data=ravdess`` prepares ravdess_audio's log-mel images, and
    train.py with the same arguments finds them ready instead of preparing again."""
    args = [
        "data=ravdess",
        f"data.root={generated_ravdess}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path / 'outputs'}",
        "logger=none",
        "data.num_workers=0",
        "data.preprocess.mfcc.window=64",
    ]  # the generated utterances are shorter than the recipe's 1.93 s
    prepared = subprocess.run(
        [sys.executable, "prepare.py", *args, "vad_plots=0"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    (folder,) = re.findall(r"^cache: (\S+) \(report.json there\)$", prepared.stdout, re.MULTILINE)
    assert json.loads((Path(folder) / "preprocess.json").read_text())["mfcc"]["representation"] == "logmel"
    n_clips = json.loads((Path(folder) / "report.json").read_text())["clips_prepared"]
    training = [
        *args,
        "stage=audio",
        "fold=0",
        "cv.k=2",
        "model.audio.trainer.max_epochs=1",
        "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1",
        "callbacks.progress_bar=null",
        "model.audio.module.backbone.channels=8",
        "model.audio.module.backbone.fc_dim=8",
    ]
    trained = subprocess.run(
        [sys.executable, "train.py", *training], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert f"cache ready: {folder} ({n_clips} clips)\n" in trained.stdout
    assert "processed now" not in trained.stdout
    assert [p for p in (tmp_path / "cache").glob("*/*") if p.is_dir()] == [Path(folder)]
