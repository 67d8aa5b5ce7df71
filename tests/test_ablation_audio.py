"""scripts/ablation_audio.py: the rows' commands and the CSV collected from their summary.json files."""

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablation_audio.py"


@pytest.fixture()
def ablation(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("ablation_audio", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RUN_ROOT", tmp_path / "ravdess" / "kfold")
    monkeypatch.setattr(module, "CSV_PATH", tmp_path / "ablation_audio.csv")
    return module


def _summary(objective: float, test_accuracies: list[float]) -> dict:
    folds = [{"fold": k, "video_accuracy": a} for k, a in enumerate(test_accuracies)]
    mean = sum(test_accuracies) / len(test_accuracies)
    return {
        "seed": 42,
        "objective": {"metric": "val/video_uar", "mode": "max", "mean": objective, "std": 0.01},
        "val": {"folds": folds, "mean": {"video_accuracy": objective, "video_uar": objective}, "std": {}},
        "test": {
            "folds": folds,
            "mean": {"video_accuracy": mean, "video_uar": mean, "segment_accuracy": 0.5},
            "std": {"video_accuracy": 0.05, "video_uar": 0.04},
        },
    }


def test_every_row_is_a_five_fold_run_of_the_recipe_experiment_with_its_own_tag(ablation):
    assert ablation.ROWS["recipe"] == []
    for row in ablation.ROWS:
        cmd = ablation.command(row)
        assert "experiment=ravdess_audio" in cmd and "fold=all" in cmd and "stage=audio" in cmd
        assert f"tag=ablation_{row}" in cmd and f"seed={ablation.SEED}" in cmd
        assert not any("test" in part.split("=")[0] for part in cmd[2:])  # nothing chosen on the test


def test_collect_writes_one_row_per_finished_run_with_val_objective_test_and_wall_time(ablation):
    stage_dir = ablation.summary_path("recipe").parent
    for fold in range(2):
        fold_dir = stage_dir / f"fold_{fold}"
        fold_dir.mkdir(parents=True)
        (fold_dir / "fold.json").write_text("{}")
        (fold_dir / "metrics.json").write_text("{}")
        os.utime(fold_dir / "fold.json", (1000.0, 1000.0))
        os.utime(fold_dir / "metrics.json", (1000.0 + 60 * (fold + 1), 1000.0 + 60 * (fold + 1)))
    ablation.summary_path("recipe").write_text(json.dumps(_summary(0.6, [0.7, 0.5])))
    rows = list(csv.DictReader(ablation.collect().open()))
    assert [r["row"] for r in rows] == ["recipe"]
    row = rows[0]
    assert float(row["val_objective_mean"]) == pytest.approx(0.6)
    assert float(row["test_video_accuracy_mean"]) == pytest.approx(0.6)
    assert float(row["wall_s_per_fold_mean"]) == pytest.approx(90.0)
    assert row["objective"] == "val/video_uar" and row["seed"] == "42" and row["folds"] == "2"
