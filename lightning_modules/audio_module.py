"""Audio network, §3.2: MFCC images -> VGG19 fc7 (4096-D) -> segment emotion; or a statistics-pooling TDNN."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from datamodules.mfcc import AUDIO_NORMS
from lightning_modules.base import (
    VGG,
    Batch,
    EmotionModule,
    build_backbone,
    checkpoint_backbone_kwargs,
    plain_training_args,
)
from lightning_modules.components.augment import SpecAugment
from lightning_modules.components.vgg import IMAGENET_MEAN, IMAGENET_STD, preprocess_uint8_images


class AudioModule(EmotionModule):
    """batch["audio"] uint8 `[B, 3, rows, frames]` (static, delta, delta-delta channels) -> backbone -> linear head.

    Args:
        backbone: the Hydra config of the network (configs/audio_backbone/): its class as ``_target_``
            (``VGGFeatureExtractor``, the default, or ``StatsPoolTDNN``) and its kwargs, e.g.
            {"_target_": "lightning_modules.components.vgg.VGGFeatureExtractor", "variant": "vgg19",
            "weights": "imagenet"}.
        num_classes: emotion classes.
        head_dropout: dropout on fc7 before the classification layer (torchvision VGG's classifier.5).
        input_mean, input_std: per-channel normalisation after scaling to [0, 1] (ImageNet's by default,
            matching the ImageNet-pretrained VGG the paper fine-tunes).
        input_norm: "none" standardises every image by ``input_mean`` / ``input_std``; "utterance" or
            "speaker" by the statistics of each channel and row that the batch carries in ``"audio_stats"``
            (``[B, 2, 3, rows]``, from the datamodule's ``audio_norm`` of the same name: over the segment's
            clip, or over all clips of its speaker).
        spec_augment: SpecAugment kwargs (freq_masks, freq_width, time_masks, time_width) applied to the
            normalised images in training; None or {} for none (the paper).
        training: EmotionModule's arguments (class_names, optimizer, lr, scheduler, ...).

    The saved hparams record backbone weights "none" (see checkpoint_backbone_kwargs), so
    `AudioModule.load_from_checkpoint(path)` rebuilds the network without downloading anything.
    """

    input_keys = ("audio",)

    def __init__(
        self,
        backbone: Mapping[str, Any] = VGG,
        num_classes: int = 6,
        head_dropout: float = 0.5,
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
        input_norm: str = "none",
        spec_augment: Mapping[str, int] | None = None,
        **training: Any,
    ) -> None:
        # plain containers, so that hparams.yaml and checkpoints hold no tuples or OmegaConf objects
        backbone, spec_augment = dict(backbone), dict(spec_augment or {})
        input_mean, input_std = list(input_mean), list(input_std)
        plain_training_args(training)
        if input_norm not in AUDIO_NORMS:
            raise ValueError(f"input_norm must be one of {AUDIO_NORMS}, got {input_norm!r}")
        super().__init__(num_classes, **training)
        self.save_hyperparameters()
        self.input_norm = input_norm
        if input_norm != "none":
            # mixup mixes the statistics with the images: the mixed image minus the mixed mean is the same mix
            # of the two standardised images' numerators
            self.input_keys = ("audio", "audio_stats")
        self.hparams["backbone"] = checkpoint_backbone_kwargs(backbone)
        self.input_mean, self.input_std = input_mean, input_std
        self.augment = SpecAugment(**spec_augment)
        self.backbone = build_backbone(backbone)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(self.backbone.out_dim, num_classes))
        self._finish_init()

    def standardise(self, batch: Batch) -> torch.Tensor:
        """uint8 images -> float images with every channel standardised (``input_norm``)."""
        if self.input_norm == "none":
            return preprocess_uint8_images(batch["audio"], self.input_mean, self.input_std)
        if "audio_stats" not in batch:
            raise ValueError(
                f"AudioModule(input_norm={self.input_norm!r}) needs each batch's audio_stats: set data.audio_norm="
                f"{self.input_norm} (the statistics it was trained with)"
            )
        stats = batch["audio_stats"].to(torch.float32)
        images = preprocess_uint8_images(batch["audio"], (0.0,) * stats.shape[2], (1.0,) * stats.shape[2])
        return (images - stats[:, 0, ..., None]) / stats[:, 1, ..., None]

    def extract_features(self, batch: Batch) -> torch.Tensor:
        """MFCC / log-mel images -> segment features `[B, out_dim]` (fc7, 4096-D, for VGG19)."""
        images = self.augment(self.standardise(batch))
        return self.backbone(images.contiguous(memory_format=self.memory_format))
