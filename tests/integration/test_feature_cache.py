"""The frozen-feature cache: hit, miss, invalidation when the weights change, atomic shards; the visual stage
training from the frozen VGG part's cached output instead of the face crops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules import feature_cache
from datamodules.feature_cache import FeatureCache
from lightning_modules.visual_module import VisualModule
from runner.loop import run
from tests.helpers.configs import TINY_MODELS, compose_train

TINY_VGG = {
    "_target_": "lightning_modules.components.vgg.VGGFeatureExtractor",
    "variant": "vgg11",
    "batch_norm": True,
    "weights": "none",
    "width": 0.125,
    "fc_dim": 16,
}


def clips(n: int = 5, rows: int = 3) -> list[tuple[str, dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    return [(f"clip{i}", {"x": torch.randn(rows + i, 4)}) for i in range(n)]


class Counting:
    """A frozen "extractor" that doubles its inputs and counts the rows it is given."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.rows += len(batch["x"])
        return 2 * batch["x"]


def test_a_miss_computes_each_item_once_a_hit_computes_nothing(tmp_path):
    cache, extractor = FeatureCache(tmp_path, {"weights": "a"}, shard_rows=8, batch_rows=2), Counting()
    assert cache.fill(clips(), extractor) == 5 and extractor.rows == 3 + 4 + 5 + 6 + 7
    shards = sorted(path.name for path in cache.folder.glob("shard_*.pt"))
    assert shards == ["shard_00000.pt", "shard_00001.pt"]  # 25 rows, closed at 8 or more: 3+4+5 and 6+7
    stamps = [path.stat().st_mtime_ns for path in cache.folder.iterdir()]
    again = Counting()
    assert cache.fill(clips(), again) == 0 and again.rows == 0
    assert [path.stat().st_mtime_ns for path in cache.folder.iterdir()] == stamps
    loaded = cache.load()
    for clip_id, inputs in clips():
        assert loaded[clip_id].dtype == torch.float16
        assert torch.allclose(loaded[clip_id].float(), 2 * inputs["x"], atol=1e-2)


def test_other_weights_are_another_key_and_another_folder(tmp_path):
    FeatureCache(tmp_path, {"weights": "a"}).fill(clips(), Counting())
    other, extractor = FeatureCache(tmp_path, {"weights": "b"}), Counting()
    assert other.folder != FeatureCache(tmp_path, {"weights": "a"}).folder and not other.load()
    assert other.fill(clips(), extractor) == 5
    assert json.loads((other.folder / "key.json").read_text()) == {"weights": "b"}


def test_a_fill_killed_mid_way_leaves_whole_shards_that_the_next_fill_keeps(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path, {"weights": "a"}, shard_rows=7)
    real_save, saved = feature_cache.atomic_save, []

    def dies_on_the_second_shard(obj, path):
        if saved:
            raise KeyboardInterrupt("killed")
        saved.append(path)
        real_save(obj, path)

    monkeypatch.setattr(feature_cache, "atomic_save", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        cache.fill(clips(), Counting())
    monkeypatch.setattr(feature_cache, "atomic_save", real_save)
    assert cache.shards == ["shard_00000.pt"] and not list(cache.folder.glob(".*tmp"))
    assert set(cache.load()) == {"clip0", "clip1"}
    extractor = Counting()
    assert cache.fill(clips(), extractor) == 3 and extractor.rows == 5 + 6 + 7
    assert set(cache.load()) == {f"clip{i}" for i in range(5)}


def visual_module(freeze: str, seed: int = 0, **kwargs) -> VisualModule:
    torch.manual_seed(seed)
    return VisualModule(backbone={**TINY_VGG, "freeze": freeze}, lstm_hidden=8, num_classes=3, **kwargs).eval()


@pytest.mark.parametrize("freeze, width", [("features", 64 * 1 * 1), ("all", 16)])  # pool5: 64 channels at 1x1
def test_the_cached_frozen_output_stands_for_the_crops(freeze, width):
    module = visual_module(freeze)
    crops = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8)
    frozen = module.frozen_extractor()({"faces": crops})
    assert frozen.shape == (6, width) and module.frozen_key()["layer"] == {"features": "pool5", "all": "fc7"}[freeze]
    index = torch.tensor([[0] * 10 + [1] * 10, list(range(6)) + [5] * 14])
    from_crops = module.extract_features({"faces": crops[index]})
    from_cache = module.extract_features({"frame_features": frozen.half()[index]})
    assert torch.allclose(from_crops, from_cache, atol=1e-2)


def test_in_training_the_cache_draws_the_dropout_of_the_crops_path():
    """Both paths run fc6/fc7 once per distinct frame (rule 3's copies share one output and one dropout mask)."""
    module = visual_module("features").train()
    crops = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8)
    frozen = module.frozen_extractor()({"faces": crops})
    index = torch.tensor([[0] * 10 + [1] * 10, list(range(6)) + [5] * 14])
    torch.manual_seed(1)
    from_crops = module.extract_features({"faces": crops[index]})
    torch.manual_seed(1)
    from_cache = module.extract_features({"frame_features": frozen[index]})  # float32: no fp16 rounding
    assert torch.allclose(from_crops, from_cache, atol=1e-6)


def test_the_key_follows_the_frozen_weights_and_nothing_else_is_cached():
    assert visual_module("features").frozen_key() == visual_module("features").frozen_key()
    assert visual_module("features").frozen_key() != visual_module("features", seed=1).frozen_key()
    assert visual_module("none").frozen_extractor() is None
    assert visual_module("features", face_augment={"flip": True}).frozen_extractor() is None


@pytest.mark.slow
def test_the_visual_stage_trains_from_the_cache(tiny_demo, tmp_path):
    overrides = [
        *tiny_demo,
        *TINY_MODELS,
        f"paths.output_dir={tmp_path}",
        "fold=0",
        "stage=visual",
        "logger=none",
        "model.visual.module.backbone.freeze=features",
        "model.visual.module.face_augment=null",
        "model.visual.trainer.max_epochs=1",
    ]  # augmented crops are not cached
    cfg = compose_train(overrides)
    summary = run(cfg)["visual"]
    assert summary["test"]["folds"][0]["n_clips"] == 6
    (folder,) = (Path(cfg.paths.cache_dir) / "frozen_features" / "demo").iterdir()
    stamps = {path: path.stat().st_mtime_ns for path in folder.glob("shard_*.pt")}
    assert stamps
    run(compose_train([*overrides, "resume=false"]))  # trained again, from the same cached features
    assert {path: path.stat().st_mtime_ns for path in folder.glob("shard_*.pt")} == stamps
