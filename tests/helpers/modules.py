"""Small real modules, data and trainers for the model tests."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_modules import AudioModule, FusionModule, VisualModule
from lightning_modules.base import VGG

TINY_VGG = {"variant": "vgg11", "width": 0.125, "fc_dim": 64, "dropout": 0.0}
TINY_VGG_CONFIG = {**VGG, **TINY_VGG}  # the backbone config of a module (configs/audio_backbone/vgg.yaml's form)
COSINE = {"_target_": "lightning_modules.schedules.cosine", "_partial_": True}
FACE_SIZE = 32
NUM_CLASSES = 3


def make_segment_rows(n_clips: int = 4, segments_per_clip: int = 3, with_features: bool = False) -> list[dict]:
    """Per-segment samples in the batch contract (random uint8 images, or fusion features)."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for clip in range(n_clips):
        for segment in range(segments_per_clip):
            row = {
                "label": torch.tensor(clip % NUM_CLASSES),
                "clip_index": torch.tensor(clip),
                "segment_id": torch.tensor(100 * clip + segment),
            }
            if with_features:
                row["audio_feat"] = torch.randn(8, generator=generator)
                row["visual_feat"] = torch.randn(8, generator=generator)
            else:
                row["audio"] = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=generator)
                row["faces"] = torch.randint(
                    0, 256, (20, 3, FACE_SIZE, FACE_SIZE), dtype=torch.uint8, generator=generator
                )
            rows.append(row)
    return rows


def make_loader(rows: list[dict], batch_size: int = 4) -> DataLoader:
    return DataLoader(rows, batch_size=batch_size)


def make_trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**defaults, **kwargs})


def make_audio_module(**kwargs) -> AudioModule:
    return AudioModule(backbone=TINY_VGG_CONFIG, num_classes=NUM_CLASSES, class_names=["a", "b", "c"], **kwargs)


def make_visual_module(**kwargs) -> VisualModule:
    return VisualModule(backbone=TINY_VGG_CONFIG, lstm_hidden=16, num_classes=NUM_CLASSES, **kwargs)


def make_fusion_module(**kwargs) -> FusionModule:
    return FusionModule(audio_dim=8, visual_dim=8, attention_dim=4, hidden_dims=[8], num_classes=NUM_CLASSES, **kwargs)
