"""Experiment tracking through train.py: offline W&B runs read back from their files, CSV and no logger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from callbacks import ConfusionMatrixLogger, FoldAccuracyLogger, build_callbacks
from callbacks.checkpoint import BestCheckpoint
from callbacks.confusion_matrix import confusion_pairs
from callbacks.fold_accuracy import cv_objective_key
from callbacks.loggers import build_logger
from callbacks.results_table import read_results
from callbacks.wandb_offline import find_offline_runs, read_offline_run, read_records

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS = 2


def train_py(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python train.py <args>`` from the repository root, W&B offline; fails the test with the output tail."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "AVER_AGENT_"))}
    environ.update({"WANDB_MODE": "offline", **(env or {})})
    result = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=600
    )
    command = " ".join(args)
    assert result.returncode == 0, f"train.py {command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def matrix_from_chart_table(columns: list[str], rows: list[list], class_names: list[str]) -> list[list[int]]:
    """The confusion matrix behind a wandb.plot.confusion_matrix table (Actual, Predicted, nPredictions)."""
    assert columns == ["Actual", "Predicted", "nPredictions"]
    index = {name: i for i, name in enumerate(class_names)}
    matrix = [[0] * len(class_names) for _ in class_names]
    for actual, predicted, count in rows:
        matrix[index[actual]][index[predicted]] = int(count)
    return matrix


def the_run(folder: Path):
    runs = find_offline_runs(folder)
    assert len(runs) == 1, f"expected one W&B run under {folder}, found {runs}"
    return read_offline_run(runs[0])


@pytest.fixture(scope="module")
def audio_cv(tiny_demo, tmp_path_factory) -> Path:
    """stage=audio fold=all on the tiny corpus (3 LOSO folds) with the default logger (W&B, offline)."""
    out = tmp_path_factory.mktemp("tracking")
    train_py(
        [
            *tiny_demo,
            f"paths.output_dir={out}",
            "stage=audio",
            "fold=all",
            "model.audio.module.backbone.fc_dim=32",
            f"model.audio.trainer.max_epochs={EPOCHS}",
            "model.audio.module.lr=0.003",
        ]
    )
    return out / "demo" / "loso" / "audio"


@pytest.mark.slow
def test_each_fold_is_a_wandb_run_holding_its_confusion_matrices_and_accuracy_row(audio_cv):
    for fold in range(3):
        fold_dir = audio_cv / f"fold_{fold}"
        metrics = json.loads((fold_dir / "metrics.json").read_text())
        classes = metrics["class_names"]
        run = the_run(fold_dir / "wandb")
        assert (run.name, run.job_type, run.project) == (f"fold_{fold}", "audio", "avemotion")
        assert run.group == "demo-loso-demo"  # <corpus>-<cv>-<experiment>
        assert run.exit_code == 0
        # the resolved Hydra config is the run config
        assert run.config["fold"] == "all" and run.config["stage"] == "audio"
        assert run.config["model"]["audio"]["module"]["lr"] == 0.003
        assert run.config["paths"]["run_dir"].rstrip("/").endswith("demo/loso")
        for level in ("segment", "video"):
            columns, rows = run.table(f"test/{level}_confusion_matrix_table")
            assert matrix_from_chart_table(columns, rows, classes) == metrics["test"][level]["confusion_matrix"]
            assert run.media_path(f"test/{level}_confusion_matrix_heatmap").read_bytes()[:8] == PNG_MAGIC
            assert (fold_dir / "plots" / f"test_{level}_confusion.png").read_bytes()[:8] == PNG_MAGIC
            # one per validation epoch, and one more: the chosen checkpoint validated for metrics.json
            assert len(run.values(f"val/{level}_confusion_matrix_table")) == EPOCHS + 1
            assert 1 <= len(run.values(f"val/{level}_confusion_matrix_heatmap")) <= EPOCHS  # at new best ones
            assert (fold_dir / "plots" / f"val_{level}_confusion.png").read_bytes()[:8] == PNG_MAGIC
        columns, rows = run.table("test/fold_accuracy")
        row = dict(zip(columns, rows[0]))
        assert len(rows) == 1 and row["fold"] == fold and row["stage"] == "audio"
        assert row["test_subjects"] == ",".join(metrics["test_subjects"])
        test = metrics["test"]
        assert row["n_test_clips"] == test["n_clips"] and row["n_test_segments"] == test["n_segments"]
        for level in ("segment", "video"):
            for name in ("accuracy", "uar", "macro_f1"):
                assert row[f"{level}_{name}"] == pytest.approx(test[level][name], abs=1e-9)
        assert run.summary["test/video_acc"] == pytest.approx(test["video"]["accuracy"], abs=1e-6)
        assert run.summary["val/video_uar"] == pytest.approx(metrics["val"]["video"]["uar"], abs=1e-6)
        assert "lr-Adam" in run.summary  # the learning-rate monitor


@pytest.mark.slow
def test_fold_all_adds_a_cv_summary_run_with_mean_std_bars_and_pooled_confusion(audio_cv):
    summary = json.loads((audio_cv / "summary.json").read_text())
    run = the_run(audio_cv / "wandb")
    fold_runs = [the_run(audio_cv / f"fold_{k}" / "wandb") for k in range(3)]
    assert (run.job_type, run.group, run.name) == ("cv-summary", "demo-loso-demo", "audio-cv-summary")
    assert len({run.run_id, *(r.run_id for r in fold_runs)}) == 4
    test, val = summary["test"], summary["val"]
    assert summary["objective"] == {
        "metric": "val/video_uar",
        "mode": "max",
        "mean": val["mean"]["video_uar"],
        "std": val["std"]["video_uar"],
    }
    assert run.summary[cv_objective_key("val/video_uar")] == pytest.approx(val["mean"]["video_uar"])
    assert run.summary["cv/objective"] == pytest.approx(val["mean"]["video_uar"])
    for name in ("video_accuracy", "segment_accuracy", "video_uar"):
        for split in ("val", "test"):
            assert run.summary[f"cv/{split}/{name}_mean"] == pytest.approx(summary[split]["mean"][name])
            assert run.summary[f"cv/{split}/{name}_std"] == pytest.approx(summary[split]["std"][name])
    columns, rows = run.table("cv/fold_accuracy")
    assert [dict(zip(columns, r))["fold"] for r in rows] == [0, 1, 2]
    assert [dict(zip(columns, r))["video_accuracy"] for r in rows] == pytest.approx(
        [f["video_accuracy"] for f in test["folds"]]
    )
    assert [dict(zip(columns, r))["val/video_uar"] for r in rows] == pytest.approx(
        [f["video_uar"] for f in val["folds"]]
    )
    _, bars = run.table("cv/fold_video_accuracy_table")
    assert [value for _, value in bars] == pytest.approx([f["video_accuracy"] for f in test["folds"]])
    for level in ("segment", "video"):
        columns, cells = run.table(f"cv/pooled_{level}_confusion_matrix_table")
        pooled = matrix_from_chart_table(columns, cells, summary["class_names"])
        assert pooled == test["pooled"][level]["confusion_matrix"]
        assert sum(map(sum, pooled)) == sum(
            sum(
                map(
                    sum,
                    json.loads((audio_cv / f"fold_{k}" / "metrics.json").read_text())["test"][level][
                        "confusion_matrix"
                    ],
                )
            )
            for k in range(3)
        )
        assert (audio_cv / f"pooled_{level}_confusion.png").read_bytes()[:8] == PNG_MAGIC
    assert run.media_path("cv/fold_accuracy_plot").read_bytes()[:8] == PNG_MAGIC
    assert (audio_cv / "fold_accuracy.png").read_bytes()[:8] == PNG_MAGIC
    (row,) = read_results(audio_cv.parent / "results.csv")
    assert row["stage"] == "audio" and row["n_folds"] == "3" and "stage=audio" in row["overrides"]
    assert row["objective"] == "val/video_uar" and row["objective_mode"] == "max"
    assert float(row["objective_mean"]) == pytest.approx(val["mean"]["video_uar"], abs=1e-4)
    assert float(row["test_video_accuracy_mean"]) == pytest.approx(test["mean"]["video_accuracy"], abs=1e-4)


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


def fold_context(tmp_path: Path) -> dict:
    return {
        "dirpath": str(tmp_path / "checkpoints"),
        "out_dir": str(tmp_path),
        "stage": "audio",
        "fold": 1,
        "test_subjects": ["s02"],
    }


def test_wandb_is_the_default_logger_offline_and_logs_checkpoints_only_online(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = build_logger(compose_train([]), stage="visual", fold=3, out_dir=tmp_path)
    assert isinstance(logger, WandbLogger) and logger._experiment is None  # no run before first use
    init = logger._wandb_init
    assert (init["mode"], init["name"], init["job_type"], init["dir"]) == ("offline", "fold_3", "visual", str(tmp_path))
    assert init["group"] == "demo-loso" and init["config"]["stage"] == "all" and logger._log_model is False
    monkeypatch.setenv("WANDB_MODE", "online")
    online = build_logger(compose_train(["tag=lr-1e-3"]), stage="audio", fold=0, out_dir=tmp_path)
    assert online._wandb_init["mode"] == "online" and online._log_model is True
    assert online._wandb_init["group"] == "demo-loso-lr-1e-3"
    with pytest.raises(ValueError, match="logger.mode='sometimes'"):
        build_logger(compose_train(["logger.mode=sometimes"]), stage="audio", fold=0, out_dir=tmp_path)


def test_csv_and_none_loggers_and_the_callbacks_they_get(tmp_path):
    cfg = compose_train(["logger=csv"])
    logger = build_logger(cfg, stage="audio", fold=1, out_dir=tmp_path)
    assert isinstance(logger, CSVLogger) and Path(logger.save_dir) == tmp_path
    callbacks = build_callbacks(cfg.callbacks, fold_context(tmp_path), has_logger=True)
    kinds = {type(c) for c in callbacks}
    assert {ModelCheckpoint, LearningRateMonitor, ConfusionMatrixLogger, FoldAccuracyLogger} <= kinds
    checkpoint = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
    assert checkpoint.dirpath == str(tmp_path / "checkpoints") and checkpoint.monitor == "val/video_uar"
    assert isinstance(checkpoint, BestCheckpoint) and checkpoint.tie_break == "val/loss"
    stopping = next(c for c in callbacks if isinstance(c, EarlyStopping))
    assert (stopping.monitor, stopping.mode) == (checkpoint.monitor, checkpoint.mode) == ("val/video_uar", "max")
    selected = build_callbacks(
        compose_train(["objective.metric=val/loss", "objective.mode=min"]).callbacks,
        fold_context(tmp_path),
        has_logger=True,
    )
    monitoring = [c for c in selected if isinstance(c, (ModelCheckpoint, EarlyStopping)) and c.monitor is not None]
    assert {(c.monitor, c.mode) for c in monitoring} == {("val/loss", "min")}
    last = [c for c in selected if isinstance(c, ModelCheckpoint) and c.monitor is None]  # the one to resume from
    assert len(last) == 1 and last[0].format_checkpoint_name({}) == str(tmp_path / "checkpoints" / "last.ckpt")
    accuracy = next(c for c in callbacks if isinstance(c, FoldAccuracyLogger))
    assert (accuracy.stage, accuracy.fold, accuracy.test_subjects) == ("audio", 1, ["s02"])

    cfg = compose_train(["logger=none"])
    assert build_logger(cfg, stage="audio", fold=1, out_dir=tmp_path) is False
    callbacks = build_callbacks(cfg.callbacks, fold_context(tmp_path), has_logger=False)
    assert not any(isinstance(c, LearningRateMonitor) for c in callbacks)
    assert any(isinstance(c, ConfusionMatrixLogger) for c in callbacks)  # the PNGs are written regardless


def test_confusion_pairs_reproduce_the_counts():
    matrix = [[2, 0, 1], [0, 0, 0], [3, 1, 4]]
    y_true, y_pred = confusion_pairs(matrix)
    rebuilt = [[0] * 3 for _ in range(3)]
    for t, p in zip(y_true, y_pred):
        rebuilt[t][p] += 1
    assert rebuilt == matrix and len(y_true) == 11


def test_a_file_that_is_not_a_wandb_run_is_named(tmp_path):
    bogus = tmp_path / "run-x.wandb"
    bogus.write_bytes(b"PK\x03\x04 not a run")
    with pytest.raises(ValueError, match="run-x.wandb: not a W&B run file"):
        list(read_records(bogus))
    with pytest.raises(FileNotFoundError, match="no run-\\*.wandb file"):
        read_offline_run(tmp_path / "empty")
