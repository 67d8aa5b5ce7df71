"""Training-time augmentation: SpecAugment masking of MFCC / log-mel images and mixup of batches."""
from __future__ import annotations

import torch
from torch import nn


def band_masks(batch: int, size: int, count: int, max_width: int, device: torch.device) -> torch.Tensor:
    """``[batch, size]`` bool: per example, the union of ``count`` bands of width uniform in
    [0, max_width] at uniform positions (SpecAugment's masking policy along one axis)."""
    positions = torch.arange(size, device=device)
    masked = torch.zeros(batch, size, dtype=torch.bool, device=device)
    for _ in range(count):
        width = torch.randint(0, max_width + 1, (batch, 1), device=device)
        start = (torch.rand(batch, 1, device=device) * (size - width + 1)).long()
        masked |= (positions >= start) & (positions < start + width)
    return masked


class SpecAugment(nn.Module):
    """Time and frequency masking (Park et al., 2019) of images ``[B, C, F, T]`` in training mode.

    ``freq_masks`` bands of up to ``freq_width`` rows (MFCC coefficients or mel bands) and
    ``time_masks`` bands of up to ``time_width`` frames are set to ``fill`` (0: the mean of normalised
    inputs), independently per example and shared by the channels (static, delta and delta-delta
    describe the same frames). Identity in eval mode or with no masks.
    """

    def __init__(self, freq_masks: int = 0, freq_width: int = 0, time_masks: int = 0, time_width: int = 0,
                 fill: float = 0.0) -> None:
        super().__init__()
        if min(freq_masks, freq_width, time_masks, time_width) < 0:
            raise ValueError("SpecAugment counts and widths must be >= 0")
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.fill = fill

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training or (self.freq_masks == 0 and self.time_masks == 0):
            return images
        batch, _, rows, frames = images.shape
        freq = band_masks(batch, rows, self.freq_masks, min(self.freq_width, rows), images.device)
        time = band_masks(batch, frames, self.time_masks, min(self.time_width, frames), images.device)
        masked = freq[:, None, :, None] | time[:, None, None, :]
        return images.masked_fill(masked, self.fill)


def mix_tensor(values: torch.Tensor, permutation: torch.Tensor, weight: float) -> torch.Tensor:
    """Mixup of a batch with its permutation: ``weight * x + (1 - weight) * x[permutation]`` (Zhang et al.,
    2018). Integer inputs (uint8 images) are mixed in float and rounded back to their dtype."""
    mixed = weight * values.float() + (1.0 - weight) * values[permutation].float()
    return mixed if values.is_floating_point() else mixed.round().to(values.dtype)


class ModalityDropout(nn.Module):
    """Drop one modality of a segment in training mode: with probability ``p`` a segment's audio or (equally
    likely) its visual feature vector is set to zero, never both (Neverova et al., 2016, "ModDrop").

    The frozen extractors fit their training subjects almost perfectly, so a fusion network trained on their
    features learns to trust whichever is sharper there; seeing each modality alone as well, it also learns
    to classify from the other one. Identity in eval mode or with ``p = 0``.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"modality dropout p={p}: must be in [0, 1]")
        self.p = p

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training or self.p == 0.0:
            return audio, visual
        dropped = torch.rand(audio.shape[0], device=audio.device) < self.p
        drop_audio = dropped & (torch.rand(audio.shape[0], device=audio.device) < 0.5)
        drop_visual = dropped & ~drop_audio
        return audio.masked_fill(drop_audio[:, None], 0.0), visual.masked_fill(drop_visual[:, None], 0.0)
