"""A time-delay network with statistics pooling: the CPU-size audio backbone for real speakers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

DEFAULT_CONTEXT: tuple[tuple[int, int], ...] = ((5, 1), (3, 2), (3, 3), (1, 1))


class StatsPoolTDNN(nn.Module):
    """Frame-level 1-D convolutions over time, then the mean and standard deviation of each channel over
    the segment's frames (statistics pooling, as in x-vectors: Snyder et al., 2018), then one embedding layer.

    The rows of every input channel (static, delta, delta-delta log-mel or MFCC) are stacked into the
    frame vector, so a segment ``[B, C, F, T]`` is a sequence of T vectors of C * F values. Unlike the
    VGG's 2-D convolutions, nothing is shared along the frequency axis, and the pooled statistics are
    learnt utterance functionals (the classical baselines' mean/std over frames, on learnt features).

    Args:
        rows: F, the rows of each image channel (``n_mels`` for log-mel images, ``n_mfcc`` for MFCC ones).
        image_channels: C (3: static, delta, delta-delta).
        channels: width of every frame-level layer.
        context: per layer (kernel size, dilation) over frames; (5, 1), (3, 2), (3, 3), (1, 1) sees
            15 frames (150 ms) per output frame.
        fc_dim: size of the returned segment embedding (the fusion stage's ``audio_dim``).
        dropout: dropout after the embedding.
        freeze: "none" or "all" (every parameter frozen, kept in eval mode).
        weights: "none" only: there are no pretrained weights for this network.
    """

    def __init__(
        self,
        rows: int = 64,
        image_channels: int = 3,
        channels: int = 256,
        context: Sequence[Sequence[int]] = DEFAULT_CONTEXT,
        fc_dim: int = 256,
        dropout: float = 0.3,
        freeze: str = "none",
        weights: str = "none",
    ) -> None:
        super().__init__()
        if weights != "none":
            raise ValueError(f"StatsPoolTDNN has no pretrained weights: weights must be 'none', got {weights!r}")
        if freeze not in ("none", "all"):
            raise ValueError(f"StatsPoolTDNN freeze must be 'none' or 'all', got {freeze!r}")
        layers: list[nn.Module] = []
        in_channels = width = image_channels * rows
        for kernel, dilation in context:
            layers += [
                nn.Conv1d(width, channels, kernel, dilation=dilation, padding=dilation * (kernel // 2)),
                nn.BatchNorm1d(channels),
                nn.ReLU(inplace=True),
            ]
            width = channels
        self.in_channels, self.out_dim, self.freeze = in_channels, fc_dim, freeze
        self.frames = nn.Sequential(*layers)
        self.embedding = nn.Sequential(
            nn.Linear(2 * channels, fc_dim), nn.BatchNorm1d(fc_dim), nn.ReLU(inplace=True), nn.Dropout(dropout)
        )
        if freeze == "all":
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> StatsPoolTDNN:
        """Switch train/eval mode; a frozen network stays in eval mode."""
        return super().train(mode and self.freeze == "none")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``[B, C, F, T]`` -> segment embeddings ``[B, fc_dim]``."""
        batch, channels, rows, frames = images.shape
        if channels * rows != self.in_channels:
            raise ValueError(
                f"StatsPoolTDNN expects {self.in_channels} values per frame (image_channels x rows) but got images "
                f"of {channels} channels x {rows} rows: set backbone.rows to the images' rows"
            )
        hidden = self.frames(images.reshape(batch, channels * rows, frames))
        return self.embedding(torch.cat([hidden.mean(dim=2), hidden.std(dim=2)], dim=1))
