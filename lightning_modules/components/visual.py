"""Segment-level visual encoder, §3.3: per-frame VGG fc7, then an LSTM over the segment's frames."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_modules.components.vgg import VGGFeatureExtractor


class FaceSequenceEncoder(nn.Module):
    """Face crops of one segment `[B, T, 3, S, S]` (T = 20 in the paper) -> segment feature `[B, lstm_hidden]`.

    Every frame goes through the same VGG (fc7, §3.3), the `[B, T, fc7]` sequence through an LSTM, and
    the last layer's final hidden state is the segment feature (4096-D in the paper). A frame equal to the one
    before it in its segment (rule 3 repeats the first and last frames, rule 1 the nearest face) reuses that
    frame's features instead of going through the VGG again. Under mixed
    precision the VGG follows autocast and the LSTM runs in its parameters' dtype.

    Args:
        vgg: a VGGFeatureExtractor or the keyword arguments to build one.
        lstm_hidden: LSTM hidden size (the segment feature size).
        lstm_layers: stacked LSTM layers.
        dropout: dropout on the per-frame fc7 features entering the LSTM, and between LSTM layers.
        frames_per_chunk: frames sent through the VGG at once. This bounds peak memory when the VGG
            runs without autograd (frozen or inference); with a trainable VGG the activations of all
            frames are kept for the backward pass regardless.
    """

    def __init__(
        self,
        vgg: VGGFeatureExtractor | dict[str, Any],
        lstm_hidden: int = 4096,
        lstm_layers: int = 1,
        dropout: float = 0.0,
        frames_per_chunk: int = 160,
    ) -> None:
        super().__init__()
        if frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
        self.vgg = vgg if isinstance(vgg, VGGFeatureExtractor) else VGGFeatureExtractor(**vgg)
        self.frame_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            self.vgg.out_dim,
            lstm_hidden,
            num_layers=lstm_layers,
            batch_first=True,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        self.out_dim = lstm_hidden
        self.frames_per_chunk = frames_per_chunk

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames `[N, 3, S, S]` -> fc7 `[N, D]`, `frames_per_chunk` frames at a time."""
        return torch.cat([self.vgg(chunk) for chunk in frames.split(self.frames_per_chunk)], dim=0)

    def forward(
        self, faces: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
    ) -> torch.Tensor:
        """Normalised face crops `[B, T, 3, S, S]` -> segment features `[B, lstm_hidden]`.

        `memory_format` is the layout the frames enter the VGG in (torch.channels_last for tensor cores).
        """
        if faces.dim() != 5:
            raise ValueError(f"expected faces of shape [B, T, 3, S, S], got {tuple(faces.shape)}")
        batch, steps = faces.shape[:2]
        repeated = torch.zeros(batch, steps, dtype=torch.bool, device=faces.device)
        repeated[:, 1:] = (faces[:, 1:] == faces[:, :-1]).flatten(2).all(dim=2)
        frames = faces[~repeated].contiguous(memory_format=memory_format)
        distinct = self.frame_features(frames)
        return self.sequence_feature(distinct[(~repeated).flatten().cumsum(0) - 1].view(batch, steps, -1))

    def from_frozen(self, frozen: torch.Tensor) -> torch.Tensor:
        """The frozen VGG part's cached output of each frame `[B, T, D]` (``VGGFeatureExtractor.frozen_output``)
        -> segment features `[B, lstm_hidden]`, through the VGG's trainable rest and the LSTM."""
        batch, steps = frozen.shape[:2]
        rows = frozen.flatten(0, 1).to(self.lstm.weight_ih_l0.dtype)
        return self.sequence_feature(self.vgg.from_frozen(rows).view(batch, steps, -1))

    def sequence_feature(self, sequence: torch.Tensor) -> torch.Tensor:
        """Frame features `[B, T, D]` -> the LSTM's last hidden state `[B, lstm_hidden]`."""
        # CUDA autocast runs cuDNN RNNs in float16 whatever its dtype (bf16-mixed would get fp16 LSTM
        # gradients without loss scaling), so the LSTM runs outside autocast in its parameters' dtype.
        with torch.autocast(device_type=sequence.device.type, enabled=False):
            _, (hidden, _) = self.lstm(self.frame_dropout(sequence.to(self.lstm.weight_ih_l0.dtype)))
        return hidden[-1]
