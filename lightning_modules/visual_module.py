"""Visual network, §3.3: 20 face crops per segment -> VGG19 fc7 per frame -> LSTM (4096-D) -> segment emotion."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from datamodules.feature_cache import tensor_digest
from lightning_modules.base import (
    VGG,
    Batch,
    EmotionModule,
    build_backbone,
    checkpoint_backbone_kwargs,
    plain_training_args,
)
from lightning_modules.components.augment import FaceAugment
from lightning_modules.components.vgg import IMAGENET_MEAN, IMAGENET_STD, preprocess_uint8_images
from lightning_modules.components.visual import FaceSequenceEncoder


class VisualModule(EmotionModule):
    """batch["faces"] uint8 `[B, 20, 3, S, S]` -> FaceSequenceEncoder (per-frame CNN + LSTM) -> linear head.

    With a frozen VGG part (``backbone.freeze``: features or all) and no face augmentation, the frozen part's
    output never changes, so it can be computed once per face crop (``frozen_extractor``, cached by
    ``datamodules.feature_cache`` under ``frozen_key``): a batch then carries ``frame_features`` `[B, 20, D]`
    instead of ``faces`` and only the trainable rest runs.

    Args:
        backbone: the Hydra config of the per-frame CNN (configs/visual_backbone/): its class as ``_target_``
            (``VGGFeatureExtractor``, the paper's and the default, or ``FaceCNN``) and its kwargs, e.g.
            {"_target_": "lightning_modules.components.vgg.VGGFeatureExtractor", "variant": "vgg19"}.
        lstm_hidden, lstm_layers: the LSTM over the frame features (4096 and 1 in the paper's reading).
        lstm_dropout: dropout on the frame features entering the LSTM and between LSTM layers.
        frames_per_chunk: frames per CNN call (bounds memory when the CNN is frozen or in inference).
        temporal, lstm_impl: as in FaceSequenceEncoder (the LSTM or the mean over frames; the LSTM's
            implementation, "torch" or "streaming").
        num_classes, head_dropout, input_mean, input_std: as in AudioModule.
        face_augment: FaceAugment kwargs (crop_scale, flip, rotation_deg, brightness, contrast,
            saturation) applied to each training sequence; None or {} trains on the crops as they are.
        training: EmotionModule's arguments (class_names, optimizer, lr, scheduler, ...).
    """

    input_keys = ("faces",)

    def __init__(
        self,
        backbone: Mapping[str, Any] = VGG,
        lstm_hidden: int = 4096,
        lstm_layers: int = 1,
        lstm_dropout: float = 0.0,
        frames_per_chunk: int = 160,
        temporal: str = "lstm",
        lstm_impl: str = "torch",
        num_classes: int = 6,
        head_dropout: float = 0.5,
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
        face_augment: Mapping[str, Any] | None = None,
        **training: Any,
    ) -> None:
        # plain containers, so that hparams.yaml and checkpoints hold no tuples or OmegaConf objects
        backbone, face_augment = dict(backbone), dict(face_augment or {})
        input_mean, input_std = list(input_mean), list(input_std)
        plain_training_args(training)
        super().__init__(num_classes, **training)
        self.save_hyperparameters()
        self.hparams["backbone"] = checkpoint_backbone_kwargs(backbone)
        self.input_mean, self.input_std = input_mean, input_std
        self.augment, self.augments = FaceAugment(**face_augment), bool(face_augment)
        self.encoder = FaceSequenceEncoder(
            build_backbone(backbone),
            lstm_hidden,
            lstm_layers,
            lstm_dropout,
            frames_per_chunk,
            temporal,
            lstm_impl=lstm_impl,
        )
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(self.encoder.out_dim, num_classes))
        self._finish_init()

    def extract_features(self, batch: Batch) -> torch.Tensor:
        """Face crops, or the frozen part's cached output of them -> segment features `[B, lstm_hidden]` (the
        LSTM's last hidden state)."""
        if "frame_features" in batch:
            return self.encoder.from_frozen(batch["frame_features"])
        faces = preprocess_uint8_images(self.augment(batch["faces"]), self.input_mean, self.input_std)
        return self.encoder(faces, memory_format=self.memory_format)

    def frozen_extractor(self) -> Callable[[Batch], torch.Tensor] | None:
        """The frozen part as a callable, ``{"faces": uint8 [N, 3, S, S]}`` -> ``[N, D]`` (pool5 or fc7), when
        its output can stand for the crops in training: a frozen part, no face augmentation and no mixup (both
        change the crops); else None."""
        cnn = self.encoder.cnn
        if cnn.frozen_layer is None or self.augments or self.mixup_alpha > 0:
            return None

        def frozen_output(batch: Batch) -> torch.Tensor:
            faces = batch["faces"].to(self.device)
            return cnn.frozen_output(preprocess_uint8_images(faces, self.input_mean, self.input_std))

        return frozen_output

    def frozen_key(self) -> dict:
        """What the frozen part's output depends on besides the crops: the layer, the input normalisation and
        the content of the frozen weights (so a retrained or other backbone never reads stale features)."""
        cnn = self.encoder.cnn
        frozen = cnn.features if cnn.frozen_layer == "pool5" else cnn
        return {
            "layer": cnn.frozen_layer,
            "input_mean": self.input_mean,
            "input_std": self.input_std,
            "weights": tensor_digest(frozen.state_dict().values()),
        }
