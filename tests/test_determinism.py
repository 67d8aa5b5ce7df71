"""Same seed, same numbers, whatever state the caches were in when the run started.

A run that has to build the preprocessing cache (or the fusion stage's feature cache) does work that a
rerun skips: building MTCNN, loading the extractor checkpoints. None of it may move the random stream
training draws from (initialisation, shuffling, dropout), or the first run of an experiment scores
differently from every rerun.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODELS, compose_train, small_demo_overrides
from hydra.utils import instantiate

from lightning_modules.cross_validation import run


@pytest.fixture(scope="module")
def cold_corpus(tmp_path_factory) -> list[str]:
    """Overrides for a small generated demo corpus whose preprocessing cache is still empty."""
    overrides = [
        *small_demo_overrides(tmp_path_factory.mktemp("cold_corpus")),
        "++data.generator.size=[96,72]",  # small frames at 10 fps: MTCNN is most of a cold run's time
        "++data.generator.fps=10",
        # one process: preprocessing (and MTCNN) runs in the training process, as on a 2-core machine
        "data.preprocess_workers=1",
        "logger=none",
        *TINY_MODELS,
    ]
    instantiate(compose_train(overrides).data).index()  # generates the clips; preprocessing is left to the run
    return overrides


def fold_metrics(cfg, stage: str, fold: int) -> dict:
    metrics = json.loads((Path(cfg.paths.run_dir) / stage / f"fold_{fold}" / "metrics.json").read_text())
    return {key: metrics[key] for key in ("val", "test", "objective")}


def best_weights(cfg, stage: str, fold: int) -> dict:
    path = Path(cfg.paths.run_dir) / stage / f"fold_{fold}" / "checkpoints" / "best.ckpt"
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a), "the trained weights differ"


@pytest.mark.slow
def test_cold_and_warm_caches_give_identical_metrics(cold_corpus):
    fold = 2
    common = [
        *cold_corpus,
        f"fold={fold}",
        "model.audio.trainer.max_epochs=2",
        "model.visual.trainer.max_epochs=1",
        "model.fusion.trainer.max_epochs=3",
    ]
    cache = Path(compose_train(cold_corpus).paths.cache_dir)
    assert not list(cache.glob("demo/*/*.pt")), "the first run must find the preprocessing cache empty"

    # first run: the audio stage prepares the clips, the fusion stage extracts its features
    cold = compose_train([*common, "stage=all", "tag=cold"])
    run(cold)
    assert list(cache.glob("demo/*/*.pt"))
    cold_audio, cold_fusion = fold_metrics(cold, "audio", fold), fold_metrics(cold, "fusion", fold)
    cold_fusion_weights = best_weights(cold, "fusion", fold)

    # the audio stage again, in another folder: the preprocessing cache is warm now
    warm = compose_train([*common, "stage=audio", "tag=warm"])
    run(warm)
    assert fold_metrics(warm, "audio", fold) == cold_audio
    assert_same_weights(best_weights(warm, "audio", fold), best_weights(cold, "audio", fold))

    # the fusion stage trained again in the same folder: it reads its features from the cache
    shards = sorted((Path(cold.paths.run_dir) / "fusion" / f"fold_{fold}" / "features").glob("*/*/shard_*.pt"))
    stamps = [shard.stat().st_mtime_ns for shard in shards]
    run(compose_train([*common, "stage=fusion", "tag=cold", "resume=false"]))
    assert shards and [shard.stat().st_mtime_ns for shard in shards] == stamps
    assert fold_metrics(cold, "fusion", fold) == cold_fusion
    assert_same_weights(best_weights(cold, "fusion", fold), cold_fusion_weights)
