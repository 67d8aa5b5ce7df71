"""cv=cross_corpus: train and validate on one generated corpus (RAVDESS layout), test on another (EmoDB
layout); classes matched by name; the baseline and the audio stage through the real configs."""

import json
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from datamodules.corpora import emodb, ravdess
from datamodules.features import FeatureDataModule
from datamodules.splits import holdout_folds, with_test_corpus
from runner.loop import run
from tests.helpers.configs import TINY_MODELS, compose_train

EMODB_SPEAKERS = ["speaker_03", "speaker_08", "speaker_09"]


@pytest.fixture(scope="module")
def ravdess_to_emodb(generated_ravdess, generated_emodb, tmp_path_factory) -> list[str]:
    base = tmp_path_factory.mktemp("cross_corpus")
    return [
        "data=ravdess",
        f"data.root={generated_ravdess}",
        "cv=cross_corpus",
        "+test_data=emodb",
        f"test_data.root={generated_emodb}",
        f"paths.cache_dir={base / 'cache'}",
        f"paths.output_dir={base / 'outputs'}",
        "logger=none",
        "data.num_workers=0",
        "test_data.num_workers=0",
    ]


def test_one_fold_trains_on_one_corpus_and_tests_on_every_clip_of_the_other(ravdess_to_emodb, generated_emodb):
    cfg = compose_train([*ravdess_to_emodb, "cv.val_subjects=[actor_04]"])
    assert cfg.cv.name == "cross_corpus-emodb" and cfg.paths.run_dir.endswith("ravdess/cross_corpus-emodb/")
    assert cfg.test_data.preprocess.mfcc == cfg.data.preprocess.mfcc and cfg.test_data.preprocess.video is False
    assert set(cfg.test_data.preprocess) == set(cfg.data.preprocess)  # every setting: one cache key per corpus
    with pytest.warns(UserWarning, match=r"dropped from ravdess: \['surprise'\]"):
        datamodule = instantiate(cfg.data, cv=instantiate(cfg.cv.folds))
    assert datamodule.classes == datamodule.test_corpus.classes == ["anger", "disgust", "fear", "happiness", "sadness"]
    (fold,) = datamodule.folds
    assert fold.test == [clip.clip_id for clip in emodb.index(generated_emodb).clips] and len(fold.test) == 45
    assert fold.test_subjects == EMODB_SPEAKERS
    training = {clip.clip_id: clip for clip in datamodule.index().clips}
    assert len(fold.train) + len(fold.val) == len(training) == 4 * 5 * 4
    assert {training[clip_id].subject for clip_id in fold.val} == {"actor_04"}
    assert datamodule.corpus_of("test") is datamodule.test_corpus and datamodule.corpus_of("val") is datamodule
    with pytest.raises(ValueError, match="stage=fusion does not run cross-corpus"):
        FeatureDataModule(datamodule, {}, {}, Path("features"))


def test_classes_missing_on_either_side_are_dropped_and_named(generated_ravdess, generated_emodb):
    cfg = compose_train(
        [
            "data=emodb",
            f"data.root={generated_emodb}",
            "data.classes=[boredom,anger,sadness,fear]",
            "cv=cross_corpus",
            "+test_data=ravdess",
            f"test_data.root={generated_ravdess}",
        ]
    )
    with pytest.warns(UserWarning) as warned:
        datamodule = instantiate(cfg.data, cv=instantiate(cfg.cv.folds))
    message = str(warned[0].message)
    assert "['anger', 'sadness', 'fear'] kept" in message and "from emodb: ['boredom']" in message
    assert "from ravdess: ['disgust', 'happiness', 'surprise']" in message
    assert {clip.label for clip in datamodule.test_corpus.index().clips} == {"anger", "sadness", "fear"}
    same_root = compose_train(
        [
            "data=emodb",
            f"data.root={generated_emodb}",
            "cv=cross_corpus",
            "+test_data=emodb",
            f"test_data.root={generated_emodb}",
        ]
    )
    with pytest.raises(InstantiationException, match="has the training corpus's root"):
        instantiate(same_root.data, cv=instantiate(same_root.cv.folds))


def test_a_fold_that_tests_its_own_corpus_cannot_take_a_test_corpus(generated_ravdess, generated_emodb):
    clips = ravdess.index(generated_ravdess, modality="audio").clips
    (own_test,) = holdout_folds(clips, test_subjects=["actor_01"])
    with pytest.raises(ValueError, match="already tests 24 clip"):
        with_test_corpus(own_test, emodb.index(generated_emodb).clips)


@pytest.mark.slow
def test_baseline_from_ravdess_to_emodb(ravdess_to_emodb):
    cfg = compose_train([*ravdess_to_emodb, "stage=baseline", "fold=all"])
    summary = run(cfg)["baseline"]
    metrics = json.loads((Path(cfg.paths.run_dir) / "baseline-mfcc_stats" / "fold_0" / "metrics.json").read_text())
    assert metrics["cv"] == "cross_corpus-emodb" and metrics["test_subjects"] == EMODB_SPEAKERS
    assert metrics["test"]["n_clips"] == 45 and len(metrics["test"]["video"]["confusion_matrix"]) == 5
    assert metrics["val_subjects"][0].startswith("actor_")
    assert summary["test"]["mean"]["video_accuracy"] > 0.4  # chance is 1/5


@pytest.mark.slow
def test_audio_stage_from_ravdess_to_emodb(ravdess_to_emodb):
    cfg = compose_train(
        [
            *ravdess_to_emodb,
            *TINY_MODELS,
            "stage=audio",
            "fold=0",
            "callbacks.progress_bar=null",
            "model.audio.trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
        ]
    )
    (fold,) = run(cfg)["audio"]["test"]["folds"]
    assert fold["subjects"] == EMODB_SPEAKERS and fold["n_clips"] == 45
    metrics = json.loads((Path(cfg.paths.run_dir) / "audio" / "fold_0" / "metrics.json").read_text())
    assert metrics["class_names"] == ["anger", "disgust", "fear", "happiness", "sadness"]
    assert metrics["test"]["n_segments"] >= 45 and metrics["val"]["n_clips"] > 0
