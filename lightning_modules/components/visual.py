"""Segment-level visual encoder, §3.3: per-frame VGG fc7, then an LSTM over the segment's frames."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightning_modules.components.lstm import StreamingLSTM

TEMPORAL_POOLS: tuple[str, ...] = ("lstm", "mean")
# The LSTM's implementations, by ``lstm_impl``: the same parameters and equations, so a checkpoint loads in either
LSTM_IMPLS: dict[str, type[nn.LSTM]] = {"torch": nn.LSTM, "streaming": StreamingLSTM}


def per_distinct_frame(
    faces: torch.Tensor,
    function: Callable[[torch.Tensor], torch.Tensor],
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """``function`` on the distinct frames of ``faces`` `[B, T, ...]` only, its `[N, ...]` output spread back to
    `[B, T, ...]`: a frame equal to the one before it (rule 3's copies, rule 1's nearest face) takes that
    frame's output, so a run of copies is computed once and stays a run."""
    batch, steps = faces.shape[:2]
    repeated = torch.zeros(batch, steps, dtype=torch.bool, device=faces.device)
    repeated[:, 1:] = (faces[:, 1:] == faces[:, :-1]).flatten(2).all(dim=2)
    distinct = function(faces[~repeated].contiguous(memory_format=memory_format))
    return distinct[(~repeated).flatten().cumsum(0) - 1].view(batch, steps, *distinct.shape[1:])


class FaceSequenceEncoder(nn.Module):
    """Face crops of one segment `[B, T, 3, S, S]` (T = 20 in the paper) -> segment feature `[B, out_dim]`.

    Every frame goes through the same CNN (VGG fc7 in the paper, §3.3), the `[B, T, D]` sequence through an
    LSTM, and the last layer's final hidden state is the segment feature (4096-D in the paper). A frame equal
    to the one before it in its segment (rule 3 repeats the first and last frames, rule 1 the nearest face)
    reuses that frame's features instead of going through the CNN again. Under mixed
    precision the CNN follows autocast and the LSTM runs in its parameters' dtype.

    Args:
        cnn: the per-frame network (a VGGFeatureExtractor or FaceCNN: ``out_dim``, ``frozen_layer``).
        lstm_hidden: LSTM hidden size (the segment feature size, ``out_dim``).
        lstm_layers: stacked LSTM layers.
        dropout: dropout on the frame features entering the LSTM (or the mean), and between LSTM layers.
        frames_per_chunk: frames sent through the CNN at once. This bounds peak memory when the VGG
            runs without autograd (frozen or inference); with a trainable VGG the activations of all
            frames are kept for the backward pass regardless.
        temporal: "lstm" (the paper) or "mean": no LSTM, the segment feature is the mean of its frames'
            features (``out_dim`` = the CNN's), for clips of a few still frames (CK+48's apex frames).
        lstm_impl: "torch" (nn.LSTM) or "streaming" (``StreamingLSTM``: on CPU, at a hidden size of at least
            1024, its own pass over the recurrent weight per step; elsewhere torch's kernels).
    """

    def __init__(
        self,
        cnn: nn.Module,
        lstm_hidden: int = 4096,
        lstm_layers: int = 1,
        dropout: float = 0.0,
        frames_per_chunk: int = 160,
        temporal: str = "lstm",
        lstm_impl: str = "torch",
    ) -> None:
        super().__init__()
        if frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
        if temporal not in TEMPORAL_POOLS:
            raise ValueError(f"temporal must be one of {TEMPORAL_POOLS}, got {temporal!r}")
        if lstm_impl not in LSTM_IMPLS:
            raise ValueError(f"lstm_impl must be one of {sorted(LSTM_IMPLS)}, got {lstm_impl!r}")
        self.cnn = cnn
        self.frame_dropout = nn.Dropout(dropout)
        self.lstm = (
            None
            if temporal == "mean"
            else LSTM_IMPLS[lstm_impl](
                self.cnn.out_dim,
                lstm_hidden,
                num_layers=lstm_layers,
                batch_first=True,
                dropout=dropout if lstm_layers > 1 else 0.0,
            )
        )
        self.out_dim = self.cnn.out_dim if self.lstm is None else lstm_hidden
        self.frames_per_chunk = frames_per_chunk

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints written before the per-frame network was configurable name it "vgg"
        for key in [key for key in state_dict if key.startswith(prefix + "vgg.")]:
            state_dict[prefix + "cnn." + key[len(prefix) + 4 :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames `[N, 3, S, S]` -> frame features `[N, D]`, `frames_per_chunk` frames at a time."""
        return torch.cat([self.cnn(chunk) for chunk in frames.split(self.frames_per_chunk)], dim=0)

    def forward(
        self, faces: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
    ) -> torch.Tensor:
        """Normalised face crops `[B, T, 3, S, S]` -> segment features `[B, out_dim]`.

        `memory_format` is the layout the frames enter the CNN in (torch.channels_last for tensor cores).
        """
        if faces.dim() != 5:
            raise ValueError(f"expected faces of shape [B, T, 3, S, S], got {tuple(faces.shape)}")
        return self.sequence_feature(per_distinct_frame(faces, self.frame_features, memory_format))

    def from_frozen(self, frozen: torch.Tensor) -> torch.Tensor:
        """The frozen CNN part's cached output of each frame `[B, T, D]` (``VGGFeatureExtractor.frozen_output``)
        -> segment features `[B, out_dim]`, through the CNN's trainable rest (once per distinct frame, as the crops'
        path runs the whole CNN) and the LSTM (or the mean)."""
        dtype = next(self.parameters()).dtype
        return self.sequence_feature(per_distinct_frame(frozen, lambda rows: self.cnn.from_frozen(rows.to(dtype))))

    def sequence_feature(self, sequence: torch.Tensor) -> torch.Tensor:
        """Frame features `[B, T, D]` -> the LSTM's last hidden state `[B, lstm_hidden]` (``temporal="lstm"``)
        or their mean over the T frames `[B, D]` (``temporal="mean"``)."""
        if self.lstm is None:
            return self.frame_dropout(sequence).mean(dim=1)
        # CUDA autocast runs cuDNN RNNs in float16 whatever its dtype (bf16-mixed would get fp16 LSTM
        # gradients without loss scaling), so the LSTM runs outside autocast in its parameters' dtype.
        with torch.autocast(device_type=sequence.device.type, enabled=False):
            _, (hidden, _) = self.lstm(self.frame_dropout(sequence.to(self.lstm.weight_ih_l0.dtype)))
        return hidden[-1]
