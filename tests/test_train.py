"""The three stages through the real configs on a small generated corpus, and the CV bookkeeping."""
import json
from pathlib import Path

import pytest

from conftest import REPO, TINY_MODELS, compose_train
from lightning_modules.cross_validation import MissingCheckpointError, run, summarize_folds


@pytest.mark.slow
def test_fast_dev_run_of_each_extractor(tiny_demo):
    for stage in ("audio", "visual"):
        cfg = compose_train([*tiny_demo, *TINY_MODELS, f"stage={stage}", "fold=1", "+trainer.fast_dev_run=true"])
        summary = run(cfg)[stage]
        assert summary["folds"][0]["n_test_clips"] > 0
        metrics = json.loads((Path(cfg.paths.run_dir) / stage / "fold_1" / "metrics.json").read_text())
        assert metrics["test_subjects"] == ["s02"] and metrics["class_names"] == list(cfg.data.classes)
        assert len(metrics["video"]["confusion_matrix"]) == 6


def test_fusion_refuses_to_start_without_upstream_checkpoints(tiny_demo, tmp_path):
    cfg = compose_train([*tiny_demo, f"paths.output_dir={tmp_path}", "stage=fusion", "fold=2"])
    with pytest.raises(MissingCheckpointError) as err:
        run(cfg)
    message = str(err.value)
    assert "python train.py stage=audio fold=2" in message and "python train.py stage=visual fold=2" in message
    assert str(tmp_path / "demo" / "loso" / "audio" / "fold_2" / "checkpoints" / "best.ckpt") in message


@pytest.mark.slow
def test_fusion_trains_on_the_frozen_extractors_features(tiny_demo, tmp_path):
    common = [*tiny_demo, *TINY_MODELS, f"paths.output_dir={tmp_path}", "fold=0",
              "+trainer.limit_train_batches=2", "trainer.max_epochs=1"]
    run(compose_train([*common, "stage=audio", "model.audio.trainer.max_epochs=1"]))
    run(compose_train([*common, "stage=visual", "model.visual.trainer.max_epochs=1"]))
    cfg = compose_train([*common, "stage=fusion", "model.fusion.trainer.max_epochs=1"])
    summary = run(cfg)["fusion"]
    fold_dir = tmp_path / "demo" / "loso" / "fusion" / "fold_0"
    features = fold_dir / "features.pt"
    assert features.exists() and (fold_dir / "metrics.json").exists()
    assert summary["folds"][0]["test_subjects"] == ["s01"]
    stamp = features.stat().st_mtime_ns
    run(cfg)  # the second run reuses the feature cache
    assert features.stat().st_mtime_ns == stamp


def test_cv_summary_arithmetic():
    def fold(k, video_cm, seg_acc):
        n = sum(map(sum, video_cm))
        acc = sum(video_cm[i][i] for i in range(2)) / n
        return {
            "corpus": "rml", "cv": "loso", "stage": "fusion", "fold": k, "test_subjects": [f"s{k}"],
            "class_names": ["a", "b"], "n_test_clips": n,
            "segment": {"accuracy": seg_acc, "uar": seg_acc, "macro_f1": seg_acc, "confusion_matrix": [[1, 0], [0, 1]]},
            "video": {"accuracy": acc, "uar": acc, "macro_f1": acc, "confusion_matrix": video_cm},
        }

    summary = summarize_folds([fold(0, [[2, 0], [0, 2]], 0.5), fold(1, [[1, 1], [1, 1]], 0.7)])
    assert summary["mean"]["video_accuracy"] == pytest.approx(0.75)
    assert summary["std"]["video_accuracy"] == pytest.approx(0.3535533906)  # sample std of (1.0, 0.5)
    assert summary["mean"]["segment_accuracy"] == pytest.approx(0.6)
    assert summary["pooled"]["video"]["confusion_matrix"] == [[3, 1], [1, 3]]
    assert summary["pooled"]["video"]["accuracy"] == pytest.approx(0.75)
    assert [row["fold"] for row in summary["folds"]] == [0, 1]


def test_every_experiment_composes():
    for path in sorted((REPO / "configs" / "experiment").glob("*.yaml")):
        cfg = compose_train([f"experiment={path.stem}", "data.root=/corpus"])
        assert cfg.model.fusion.module.audio_dim == cfg.model.audio.module.backbone.fc_dim
        assert cfg.model.fusion.module.visual_dim == cfg.model.visual.module.lstm_hidden
        if path.stem.startswith("paper_"):
            assert cfg.model.audio.module.backbone.variant == "vgg19"
            assert cfg.data.preprocess.faces.size == 227 and cfg.model.visual.module.lstm_hidden == 4096
