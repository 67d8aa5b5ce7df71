"""The three stages through the real configs on a small generated corpus, and the CV bookkeeping."""

import json
from pathlib import Path

import pytest
from conftest import REPO, TINY_MODELS, compose_train

from lightning_modules.cross_validation import MissingCheckpointError, run
from lightning_modules.cv_summary import summarize_folds, summarize_seeds


@pytest.mark.slow
def test_fast_dev_run_of_each_extractor(tiny_demo):
    for stage in ("audio", "visual"):
        cfg = compose_train([*tiny_demo, *TINY_MODELS, f"stage={stage}", "fold=1", "+trainer.fast_dev_run=true"])
        summary = run(cfg)[stage]
        assert summary["test"]["folds"][0]["n_clips"] > 0
        metrics = json.loads((Path(cfg.paths.run_dir) / stage / "fold_1" / "metrics.json").read_text())
        assert metrics["test_subjects"] == ["s02"] and metrics["val_subjects"] == ["s03"]
        assert metrics["class_names"] == list(cfg.data.classes)
        assert len(metrics["test"]["video"]["confusion_matrix"]) == 6
        assert metrics["objective"] == {
            "metric": "val/video_uar",
            "mode": "max",
            "tie_break": "val/loss",
            "tie_break_mode": "min",
            "value": metrics["val"]["video"]["uar"],
        }


def test_fusion_refuses_to_start_without_upstream_checkpoints(tiny_demo, tmp_path):
    cfg = compose_train([*tiny_demo, f"paths.output_dir={tmp_path}", "stage=fusion", "fold=2"])
    with pytest.raises(MissingCheckpointError) as err:
        run(cfg)
    message = str(err.value)
    assert "python train.py stage=audio fold=2" in message and "python train.py stage=visual fold=2" in message
    assert str(tmp_path / "demo" / "loso" / "audio" / "fold_2" / "checkpoints" / "best.ckpt") in message
    assert not (tmp_path / "demo" / "loso" / "fusion").exists(), "refused before its fold folder was made"


@pytest.mark.slow
def test_fusion_trains_on_the_frozen_extractors_features(tiny_demo, tmp_path):
    common = [
        *tiny_demo,
        *TINY_MODELS,
        f"paths.output_dir={tmp_path}",
        "fold=0",
        "+trainer.limit_train_batches=2",
        "trainer.max_epochs=1",
    ]
    run(compose_train([*common, "stage=audio", "model.audio.trainer.max_epochs=1"]))
    run(compose_train([*common, "stage=visual", "model.visual.trainer.max_epochs=1"]))
    cfg = compose_train([*common, "stage=fusion", "model.fusion.trainer.max_epochs=1"])
    summary = run(cfg)["fusion"]
    fold_dir = tmp_path / "demo" / "loso" / "fusion" / "fold_0"
    shards = sorted((fold_dir / "features").glob("*/*/shard_*.pt"))
    assert len(shards) == 2 and (fold_dir / "metrics.json").exists()  # one cache each for audio and visual
    assert summary["test"]["folds"][0]["subjects"] == ["s01"]
    stamps = [shard.stat().st_mtime_ns for shard in shards]
    run(compose_train([*common, "stage=fusion", "model.fusion.trainer.max_epochs=1", "resume=false"]))
    assert [shard.stat().st_mtime_ns for shard in shards] == stamps  # trained again, from the cached features


def test_cv_summary_arithmetic():
    def block(video_cm, seg_acc, val_uar=0.0):
        n = sum(map(sum, video_cm))
        acc = sum(video_cm[i][i] for i in range(2)) / n
        return {
            "n_clips": n,
            "n_segments": 2 * n,
            "segment": {
                "accuracy": seg_acc,
                "uar": seg_acc,
                "macro_f1": seg_acc,
                "loss": 1.0,
                "confusion_matrix": [[1, 0], [0, 1]],
            },
            "video": {"accuracy": acc, "uar": val_uar or acc, "macro_f1": acc, "confusion_matrix": video_cm},
        }

    def fold(k, video_cm, seg_acc, val_uar):
        return {
            "corpus": "rml",
            "cv": "loso",
            "stage": "fusion",
            "fold": k,
            "seed": 3,
            "class_names": ["a", "b"],
            "test_subjects": [f"s{k}"],
            "val_subjects": [f"s{k + 1}"],
            "test": block(video_cm, seg_acc),
            "val": block([[1, 0], [0, 1]], 0.9, val_uar),
        }

    objective = {"metric": "val/video_uar", "mode": "max"}
    summary = summarize_folds([fold(0, [[2, 0], [0, 2]], 0.5, 0.4), fold(1, [[1, 1], [1, 1]], 0.7, 0.8)], objective)
    test = summary["test"]
    assert test["mean"]["video_accuracy"] == pytest.approx(0.75)
    assert test["std"]["video_accuracy"] == pytest.approx(0.3535533906)  # sample std of (1.0, 0.5)
    assert test["mean"]["segment_accuracy"] == pytest.approx(0.6)
    assert test["pooled"]["video"]["confusion_matrix"] == [[3, 1], [1, 3]]
    assert test["pooled"]["video"]["accuracy"] == pytest.approx(0.75)
    assert [row["fold"] for row in test["folds"]] == [0, 1]
    assert [row["subjects"] for row in summary["val"]["folds"]] == [["s1"], ["s2"]]
    # the objective comes from the validation block, never from the test block
    assert summary["objective"] == {
        "metric": "val/video_uar",
        "mode": "max",
        "mean": pytest.approx(0.6),
        "std": pytest.approx(0.2828427125),
    }
    assert summary["seed"] == 3


def test_a_test_metric_is_refused_as_objective(tiny_demo):
    for metric in ("test/video_acc", "video_uar", "val/attn_audio"):
        with pytest.raises(ValueError, match="model selection must use a validation metric"):
            run(compose_train([*tiny_demo, f"objective.metric={metric}", "fold=0", "stage=audio"]))


def test_every_experiment_composes():
    for path in sorted((REPO / "configs" / "experiment").glob("*.yaml")):
        cfg = compose_train([f"experiment={path.stem}", "data.root=/corpus"])
        assert cfg.model.fusion.module.audio_dim == cfg.model.audio.module.backbone.fc_dim
        assert cfg.model.fusion.module.visual_dim == cfg.model.visual.module.lstm_hidden
        if path.stem.startswith("paper_"):
            assert cfg.model.audio.module.backbone.variant == "vgg19"
            assert cfg.data.preprocess.faces.size == 227 and cfg.model.visual.module.lstm_hidden == 4096


def test_seeds_summary_separates_the_spread_over_seeds_from_the_spread_over_folds():
    def seed_summary(seed, fold_means, fold_std):
        names = (
            "segment_loss",
            "segment_accuracy",
            "segment_uar",
            "segment_macro_f1",
            "video_accuracy",
            "video_uar",
            "video_macro_f1",
        )
        block = {"mean": dict.fromkeys(names, fold_means), "std": dict.fromkeys(names, fold_std)}
        return {
            "corpus": "demo",
            "cv": "loso",
            "stage": "audio",
            "class_names": ["a"],
            "seed": seed,
            "objective": {"metric": "val/video_uar", "mode": "max", "mean": fold_means},
            "val": block,
            "test": block,
        }

    summary = summarize_seeds([seed_summary(0, 0.6, 0.1), seed_summary(1, 0.8, 0.3), seed_summary(2, 0.7, 0.2)])
    assert summary["seeds"] == [0, 1, 2]
    assert summary["test"]["mean"]["video_accuracy"] == pytest.approx(0.7)
    assert summary["test"]["std_over_seeds"]["video_accuracy"] == pytest.approx(0.1)
    assert summary["test"]["std_over_folds"]["video_accuracy"] == pytest.approx(0.2)
    assert summary["objective"]["mean"] == pytest.approx(0.7)
    assert [row["seed"] for row in summary["val"]["per_seed"]] == [0, 1, 2]


@pytest.mark.slow
def test_seeds_run_the_cross_validation_once_per_seed(tiny_demo, tmp_path):
    cfg = compose_train(
        [
            *tiny_demo,
            *TINY_MODELS,
            f"paths.output_dir={tmp_path}",
            "stage=audio",
            "fold=all",
            "seeds=[0,1]",
            "model.audio.trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "logger=none",
        ]
    )
    returned = run(cfg)["audio"]
    run_dir = tmp_path / "demo" / "loso"
    per_seed = [json.loads((run_dir / f"seed_{s}" / "audio" / "summary.json").read_text()) for s in (0, 1)]
    assert [s["seed"] for s in per_seed] == [0, 1]
    assert json.loads((run_dir / "seed_1" / "audio" / "fold_2" / "metrics.json").read_text())["seed"] == 1
    seeds_summary = json.loads((run_dir / "audio" / "seeds_summary.json").read_text())
    assert seeds_summary == returned and seeds_summary["seeds"] == [0, 1]
    assert seeds_summary["objective"]["mean"] == pytest.approx(sum(s["objective"]["mean"] for s in per_seed) / 2)
    means = [s["test"]["mean"]["video_accuracy"] for s in per_seed]
    assert seeds_summary["test"]["mean"]["video_accuracy"] == pytest.approx(sum(means) / 2)
