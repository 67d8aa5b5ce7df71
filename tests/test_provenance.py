"""Provenance: fold.json per (stage, fold), fusion refusing mismatched extractors, caches keyed by content."""

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.preprocess import cache_key
from lightning_modules.cross_validation import MismatchedCheckpointError, run

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.audio.module.backbone.fc_dim=32",
    "model.visual.module.backbone.fc_dim=32",
    "model.visual.module.lstm_hidden=32",
    "model.fusion.module.attention_dim=16",
    "model.fusion.module.hidden_dims=[32]",
    "+trainer.limit_train_batches=2",
    "trainer.max_epochs=1",
    "model.audio.trainer.max_epochs=1",
    "model.visual.trainer.max_epochs=1",
    "model.fusion.trainer.max_epochs=1",
    "logger=none",
    "fold=0",
]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.fixture(scope="module")
def extractors(tiny_demo, tmp_path_factory) -> list[str]:
    """Overrides of a run folder holding fold 0's audio and visual extractors."""
    common = [*tiny_demo, *TINY, f"paths.output_dir={tmp_path_factory.mktemp('provenance')}"]
    run(compose_train([*common, "stage=audio"]))
    run(compose_train([*common, "stage=visual"]))
    return common


def test_every_stage_fold_records_what_it_was_trained_on(extractors):
    cfg = compose_train([*extractors, "stage=audio"])
    datamodule = instantiate(cfg.data, cv=instantiate(cfg.cv.folds))
    record = json.loads((Path(cfg.paths.run_dir) / "audio" / "fold_0" / "fold.json").read_text())
    assert record["fold_hash"] == datamodule.folds[0].content_hash
    assert record["preprocess_key"] == datamodule.cache_folder.name
    assert record["root"] == str(Path(cfg.data.root).resolve())
    assert record["cv"]["name"] == "loso" and record["seed"] == cfg.seed
    assert record["class_names"] == list(cfg.data.classes)
    assert datamodule.folds[1].content_hash != record["fold_hash"]


@pytest.mark.slow
def test_fusion_features_are_keyed_by_checkpoint_content(extractors):
    cfg = compose_train([*extractors, "stage=fusion"])
    fold_dir = Path(cfg.paths.run_dir) / "fusion" / "fold_0"
    run(cfg)
    audio_features = fold_dir / "features" / "audio"
    built = {path: path.stat().st_mtime_ns for path in audio_features.glob("*/shard_*.pt")}
    assert len(built) == 1
    audio_ckpt = Path(cfg.paths.run_dir) / "audio" / "fold_0" / "checkpoints" / "best.ckpt"
    os.utime(audio_ckpt)  # touched or copied, same content: the cache is reused
    run(cfg)
    assert {path: path.stat().st_mtime_ns for path in audio_features.glob("*/shard_*.pt")} == built
    run(compose_train([*extractors, "stage=audio", "seed=7"]))  # retrained: other weights, another key
    run(cfg)
    assert len(list(audio_features.glob("*/shard_*.pt"))) == 2


@pytest.mark.slow
def test_fusion_refuses_extractors_of_another_fold_split(extractors):
    loso_dir = compose_train([*extractors, "stage=fusion"]).paths.run_dir
    cfg = compose_train(
        [
            *extractors,
            "stage=fusion",
            "cv=kfold",
            "cv.folds.k=3",
            "cv.folds.group_by=subject",
            f"paths.upstream_dir={loso_dir}",
        ]
    )
    with pytest.raises(MismatchedCheckpointError) as err:
        run(cfg)
    own = instantiate(cfg.data, cv=instantiate(cfg.cv.folds)).folds[0].content_hash
    theirs = json.loads((Path(loso_dir) / "audio" / "fold_0" / "fold.json").read_text())["fold_hash"]
    message = str(err.value)
    assert f"fold_hash={theirs}" in message and f"fold_hash={own}" in message
    assert "python train.py stage=audio fold=0" in message


def test_the_clip_cache_never_mixes_two_corpora_with_the_same_clip_ids(tiny_demo, tmp_path):
    cfg = compose_train(tiny_demo)
    preprocess = OmegaConf.to_container(cfg.data.preprocess, resolve=True)
    assert cache_key(preprocess, "/corpora/a") != cache_key(preprocess, "/corpora/b")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").symlink_to(tmp_path / "a")
    first = instantiate(cfg.data, root=str(tmp_path / "a"), generator=None)
    linked = instantiate(cfg.data, root=str(tmp_path / "b"), generator=None)
    other = instantiate(cfg.data, root=str(tmp_path), generator=None)
    assert first.cache_folder == linked.cache_folder  # a symlink to the same corpus shares its cache
    assert first.cache_folder != other.cache_folder
