"""A small from-scratch CNN for face crops: the CPU-size frame encoder for real faces (CK+)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

DEFAULT_CHANNELS: tuple[int, ...] = (16, 32, 64, 128)


def standardise_each_crop(images: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Every channel of every image ``[N, C, H, W]`` to zero mean and unit std over its own pixels.

    Removes a crop's overall brightness and contrast (lighting, skin tone, camera gain), and with them any
    per-channel affine scaling applied before (so the ImageNet normalisation of the input makes no
    difference). ``eps`` keeps a flat crop finite.
    """
    mean = images.mean(dim=(2, 3), keepdim=True)
    std = images.std(dim=(2, 3), keepdim=True)
    return (images - mean) / (std + eps)


class FaceCNN(nn.Module):
    """Per-crop standardisation, then blocks of 3x3 convolution, BatchNorm and ReLU with a 2x2 max pool
    between blocks, then the last block's channels averaged over a ``pool_grid`` x ``pool_grid`` grid of
    regions and concatenated (the frame feature; 1: the global average).

    A grid keeps where on the face a channel fired (the mouth's corners, the brows), which the global
    average discards; on aligned face crops that layout is much of an expression.

    At 48 x 48 px with the default channels (16, 32, 64, 128: 0.10 M parameters) a crop costs about
    40 MFLOPs, so a from-scratch model trains on a few hundred sequences in about a minute on 2 CPU cores,
    where a VGG at the same size under-fits (README, "Faces: CK+").

    Args:
        channels: output channels of each block; the last is ``out_dim``.
        image_channels: input channels (3: grey crops arrive as three equal channels).
        dropout: dropout on the frame feature.
        pool_grid: regions a side of the last block's average (``out_dim`` = last channels x pool_grid**2).
        freeze: "none" only (there are no pretrained weights to keep).
        weights: "none" only.
    """

    def __init__(
        self,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        image_channels: int = 3,
        dropout: float = 0.3,
        pool_grid: int = 1,
        freeze: str = "none",
        weights: str = "none",
    ) -> None:
        super().__init__()
        if weights != "none" or freeze != "none":
            raise ValueError(
                f"FaceCNN trains from scratch: weights and freeze must be 'none', got weights={weights!r}, "
                f"freeze={freeze!r}"
            )
        if not channels or min(channels) < 1:
            raise ValueError(f"FaceCNN channels must be a non-empty list of positive sizes, got {list(channels)}")
        if pool_grid < 1:
            raise ValueError(f"FaceCNN pool_grid must be a positive number of regions a side, got {pool_grid}")
        layers: list[nn.Module] = []
        width = image_channels
        for index, out in enumerate(channels):
            if index:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool_grid)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = width * pool_grid * pool_grid
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def frozen_layer(self) -> None:
        """Nothing is frozen, so there is no frozen output to cache (see ``VGGFeatureExtractor.frozen_layer``)."""
        return None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[N, C, H, W]`` (H, W >= 2 ** (blocks - 1)) -> frame features ``[N, out_dim]``."""
        return self.dropout(self.pool(self.features(standardise_each_crop(images))).flatten(1))
