"""Training-time augmentation: SpecAugment masking of MFCC / log-mel images, mixup of batches, modality
dropout of fusion inputs and crop / flip / rotation / colour jitter of face sequences."""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_modules.components.visual import per_distinct_frame


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

    def __init__(
        self, freq_masks: int = 0, freq_width: int = 0, time_masks: int = 0, time_width: int = 0, fill: float = 0.0
    ) -> None:
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


class FaceAugment(nn.Module):
    """Random crop, horizontal flip, rotation and colour jitter of face sequences ``[B, T, C, H, W]`` in
    training mode, drawn once per sequence so that its frames move and are lit alike (the LSTM sees one
    face over time, not a flicker).

    The geometric part is one affine warp per sequence: zoom to a side fraction in ``[crop_scale, 1]``
    at a random position inside the frame, rotate by up to ``rotation_deg`` either way, mirror with
    probability 0.5 when ``flip``. The colour part scales brightness, contrast (about each frame's grey
    mean) and saturation (about each pixel's grey) by factors uniform in ``[1 - x, 1 + x]``, which is
    how skin tone and lighting differ between people and recordings. Accepts uint8 (returned rounded to
    uint8) or float images in [0, 1]. Identity in eval mode or with the defaults.

    ``erase``: the probability of occluding one rectangle (2-33 % of the image, aspect 0.3-3.3, filled with the
    image's mean colour: random erasing, Zhong et al., 2020), the same rectangle on every frame of a sequence.

    ``per_frame``: draw for every distinct frame instead (a run of repeated frames, as rule 3 makes, is one
    frame and stays a run): for sequences of a few still frames (CK+'s apex frames) that are views of one
    expression, not motion, and so give that many independent views.
    """

    def __init__(
        self,
        crop_scale: float = 1.0,
        flip: bool = False,
        rotation_deg: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        erase: float = 0.0,
        per_frame: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < crop_scale <= 1.0:
            raise ValueError(f"face augment crop_scale={crop_scale}: must be in (0, 1]")
        if min(rotation_deg, brightness, contrast, saturation) < 0 or max(brightness, contrast, saturation) >= 1:
            raise ValueError("face augment rotation_deg must be >= 0 and brightness, contrast, saturation in [0, 1)")
        if not 0.0 <= erase <= 1.0:
            raise ValueError(f"face augment erase={erase}: a probability, in [0, 1]")
        self.crop_scale, self.flip, self.rotation_deg = crop_scale, flip, rotation_deg
        self.brightness, self.contrast, self.saturation, self.erase = brightness, contrast, saturation, erase
        self.per_frame = per_frame

    def _factors(self, amount: float, batch: int, device: torch.device) -> torch.Tensor:
        return 1.0 + amount * (2.0 * torch.rand(batch, 1, 1, 1, 1, device=device) - 1.0)

    def _warp(self, images: torch.Tensor) -> torch.Tensor:
        batch, frames, channels, height, width = images.shape
        device = images.device
        scale = self.crop_scale + (1.0 - self.crop_scale) * torch.rand(batch, device=device)
        angle = torch.deg2rad(self.rotation_deg * (2.0 * torch.rand(batch, device=device) - 1.0))
        mirror = (
            torch.where(torch.rand(batch, device=device) < 0.5, -1.0, 1.0)
            if self.flip
            else torch.ones(batch, device=device)
        )
        shift = (1.0 - scale)[:, None] * (2.0 * torch.rand(batch, 2, device=device) - 1.0)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack(
            [
                torch.stack([cos * mirror, -sin, shift[:, 0]], dim=1),
                torch.stack([sin * mirror, cos, shift[:, 1]], dim=1),
            ],
            dim=1,
        )
        theta = theta.repeat_interleave(frames, dim=0)
        flat = images.reshape(batch * frames, channels, height, width)
        grid = nn.functional.affine_grid(theta, list(flat.shape), align_corners=False)
        warped = nn.functional.grid_sample(flat, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return warped.reshape(images.shape)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        geometric = self.crop_scale < 1.0 or self.flip or self.rotation_deg > 0
        colour = self.brightness > 0 or self.contrast > 0 or self.saturation > 0
        if not self.training or not (geometric or colour or self.erase > 0):
            return faces
        if self.per_frame:  # each distinct frame a sequence of its own
            return per_distinct_frame(faces, lambda frames: self._augment(frames[:, None], geometric, colour)[:, 0])
        return self._augment(faces, geometric, colour)

    def _occlude(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, _, height, width = images.shape

        def draw() -> torch.Tensor:
            return torch.rand(batch, device=images.device)

        area = (0.02 + 0.31 * draw()) * height * width
        ratio = torch.exp(math.log(0.3) + math.log(3.3 / 0.3) * draw())
        tall, wide = (area * ratio).sqrt().clamp(1, height), (area / ratio).sqrt().clamp(1, width)
        top, left = draw() * (height - tall), draw() * (width - wide)
        rows = torch.arange(height, device=images.device)[None]
        cols = torch.arange(width, device=images.device)[None]
        in_rows = (rows >= top[:, None]) & (rows < (top + tall)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + wide)[:, None])
        inside = in_rows[:, :, None] & in_cols[:, None, :] & (draw() < self.erase)[:, None, None]
        return torch.where(inside[:, None, None], images.mean(dim=(3, 4), keepdim=True), images)

    def _augment(self, faces: torch.Tensor, geometric: bool, colour: bool) -> torch.Tensor:
        images = faces.float() / 255.0 if faces.dtype == torch.uint8 else faces
        batch = images.shape[0]
        if geometric:
            images = self._warp(images)
        if colour:
            grey_weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 1, 3, 1, 1)
            images = images * self._factors(self.brightness, batch, images.device)
            grey = (images * grey_weights).sum(dim=2, keepdim=True) if images.shape[2] == 3 else images
            mean = grey.mean(dim=(2, 3, 4), keepdim=True)
            contrast = self._factors(self.contrast, batch, images.device)
            images, grey = mean + (images - mean) * contrast, mean + (grey - mean) * contrast
            images = grey + (images - grey) * self._factors(self.saturation, batch, images.device)
        if self.erase > 0:
            images = self._occlude(images)
        images = images.clamp(0.0, 1.0)
        return (images * 255.0).round().to(torch.uint8) if faces.dtype == torch.uint8 else images
