"""Audio network, §3.2: MFCC images -> VGG19 fc7 (4096-D) -> segment emotion."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from lightning_modules.base import Batch, EmotionModule, checkpoint_backbone_kwargs
from lightning_modules.components.augment import SpecAugment
from lightning_modules.components.vgg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGGFeatureExtractor,
    preprocess_uint8_images,
)


class AudioModule(EmotionModule):
    """batch["audio"] uint8 `[B, 3, 64, 64]` (static, delta, delta-delta MFCC channels) -> VGG fc7 -> linear head.

    Args:
        backbone: VGGFeatureExtractor kwargs (e.g. {"variant": "vgg19", "weights": "imagenet"}).
        num_classes: emotion classes.
        head_dropout: dropout on fc7 before the classification layer (torchvision VGG's classifier.5).
        input_mean, input_std: per-channel normalisation after scaling to [0, 1] (ImageNet's by default,
            matching the ImageNet-pretrained VGG the paper fine-tunes).
        spec_augment: SpecAugment kwargs (freq_masks, freq_width, time_masks, time_width) applied to the
            normalised images in training; None or {} for none (the paper).
        training: EmotionModule's arguments (class_names, optimizer, lr, weight_decay, ...).

    The saved hparams record backbone weights "none" (see checkpoint_backbone_kwargs), so
    `AudioModule.load_from_checkpoint(path)` rebuilds the network without downloading anything.
    """

    input_keys = ("audio",)

    def __init__(
        self,
        backbone: Mapping[str, Any] | None = None,
        num_classes: int = 6,
        head_dropout: float = 0.5,
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
        spec_augment: Mapping[str, int] | None = None,
        **training: Any,
    ) -> None:
        # plain containers, so that hparams.yaml and checkpoints hold no tuples or OmegaConf objects
        backbone, spec_augment = dict(backbone or {}), dict(spec_augment or {})
        input_mean, input_std = list(input_mean), list(input_std)
        if training.get("class_names") is not None:
            training["class_names"] = list(training["class_names"])
        super().__init__(num_classes, **training)
        self.save_hyperparameters()
        self.hparams["backbone"] = checkpoint_backbone_kwargs(backbone)
        self.input_mean, self.input_std = input_mean, input_std
        self.augment = SpecAugment(**spec_augment)
        self.backbone = VGGFeatureExtractor(**backbone)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(self.backbone.out_dim, num_classes))
        self._finish_init()

    def extract_features(self, batch: Batch) -> torch.Tensor:
        """MFCC images -> fc7 features `[B, out_dim]` (4096-D for VGG19)."""
        images = self.augment(preprocess_uint8_images(batch["audio"], self.input_mean, self.input_std))
        return self.backbone(images.contiguous(memory_format=self.memory_format))
