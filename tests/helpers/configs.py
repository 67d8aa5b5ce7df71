"""The real configs composed as train.py composes them, and overrides for small, fast runs."""

import copy
import os
from pathlib import Path

from omegaconf import OmegaConf

from tests.helpers.paths import REPO

TINY_MODELS = [
    "model.audio.module.backbone.fc_dim=32",
    "model.visual.module.backbone.fc_dim=32",
    "model.visual.module.lstm_hidden=32",
    "model.fusion.module.attention_dim=16",
    "model.fusion.module.hidden_dims=[32]",
]


def compose_train(overrides: list[str]):
    """configs/train.yaml composed with ``overrides``, as ``python train.py <overrides>`` would."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


def small_demo_overrides(base: Path) -> list[str]:
    """Hydra overrides for a small generated demo corpus (3 subjects x 6 emotions x 1 clip) under ``base``."""
    os.environ.setdefault("AVER_ROOT", str(REPO))
    return [
        f"paths.data_dir={base / 'data'}",
        f"paths.cache_dir={base / 'cache'}",
        f"paths.output_dir={base / 'outputs'}",
        "++data.generator.subjects=3",
        "++data.generator.clips_per_emotion=1",
        "++data.generator.seconds=[1.9,2.2]",
        "data.preprocess.faces.size=32",
        "data.preprocess.faces.detect_max_side=160",
        "callbacks.progress_bar=null",
    ]


# configs/preprocess/paper.yaml as a plain dict
PAPER = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "preprocess" / "paper.yaml"))


def audio_cfg() -> dict:
    cfg = copy.deepcopy(PAPER)
    cfg["video"] = False
    return cfg
