"""VGG fc7 feature extractor shared by the audio (§3.2) and visual (§3.3) networks."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.models import vgg as tv_vgg

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

VGG_CONFIGS: dict[str, str] = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
FREEZE_MODES: tuple[str, ...] = ("none", "features", "all")
POOLS: dict[str, int] = {"7x7": 7, "global": 1}  # output side of the adaptive average pool before fc6
FULL_FC_DIM = 4096


def preprocess_uint8_images(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 images `[..., C, H, W]` in 0-255 -> float32 `(x / 255 - mean) / std` per channel."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.dim() < 3 or images.shape[-3] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"images of shape {tuple(images.shape)} do not have {len(mean)} channels at dim -3 "
            f"(mean has {len(mean)} values, std {len(std)})"
        )
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean_t) / std_t


def _scaled_config(variant: str, width: float) -> list[int | str]:
    """torchvision's layer list for `variant` with every conv's channel count scaled by `width`."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return [v if v == "M" else max(1, round(int(v) * width)) for v in tv_vgg.cfgs[VGG_CONFIGS[variant]]]


def _init_like_torchvision(module: nn.Module) -> None:
    """The random initialisation of torchvision's VGG.__init__ (kaiming convs, N(0, 0.01) linears)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)


def _torchvision_weights_enum(variant: str, batch_norm: bool) -> tv_vgg.WeightsEnum:
    """The ImageNet weights enum of a torchvision VGG, e.g. VGG19_BN_Weights.IMAGENET1K_V1."""
    enum_name = f"{variant.upper()}{'_BN' if batch_norm else ''}_Weights"
    return getattr(tv_vgg, enum_name).IMAGENET1K_V1


def _fc7_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision VGG state dict without the 1000-class layer (classifier.6), which fc7 does not use."""
    return {k: v for k, v in state_dict.items() if not k.startswith("classifier.6.")}


def _imagenet_state_dict(variant: str, batch_norm: bool) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for the variant, from $TORCH_HOME's cache or downloaded."""
    weights_enum = _torchvision_weights_enum(variant, batch_norm)
    try:
        return weights_enum.get_state_dict(progress=False)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise RuntimeError(
            f"could not obtain torchvision {weights_enum} ({weights_enum.url}): {exc}. Offline, save the "
            f"state dict of torchvision's {variant}{'_bn' if batch_norm else ''} on a machine with internet "
            "access and pass its path as weights=/path/to.pth, or place the downloaded file in "
            "$TORCH_HOME/hub/checkpoints/."
        ) from exc


def _state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict (name -> tensor) saved with torch.save, with errors naming the file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"VGG weights file {path} does not exist (weights must be 'none', 'imagenet' or a path)"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a loadable torch state dict ({exc})") from exc
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor) saved from a torchvision VGG")
    return state_dict


def _read_weights(weights: str, variant: str, batch_norm: bool) -> dict[str, torch.Tensor] | None:
    """The state dict that `weights` names, or None for "none" (random init)."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return _imagenet_state_dict(variant, batch_norm)
    return _state_dict_file(Path(weights))


def _pooling_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``[n_out, n_in]``: row i averages the inputs that adaptive average pooling gives output i."""
    matrix = torch.zeros(n_out, n_in, dtype=like.dtype, device=like.device)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-(i + 1) * n_in // n_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def output_side(output_size: int | tuple[int | None, int | None], x: torch.Tensor) -> tuple[int, int]:
    """Adaptive pooling's ``(height, width)`` for ``x``: ``output_size`` with None read from ``x``."""
    height, width = (n if n is not None else x.shape[d] for n, d in zip(_pair(output_size), (-2, -1)))
    return height, width


def adaptive_avg_pool2d_by_matmul(x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)`` as two matrix products, whose backward is deterministic
    on CUDA (the pooling kernel's backward adds with atomics and has no deterministic version)."""
    height, width = output_side(output_size, x)
    rows = _pooling_matrix(x.shape[-2], height, x)
    cols = _pooling_matrix(x.shape[-1], width, x)
    return rows @ x @ cols.T


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that stays usable under ``torch.use_deterministic_algorithms(True)``
    (``trainer.deterministic=true``) on CUDA, where PyTorch refuses the pooling kernel's backward: there
    it pools by matrix products. Elsewhere it is the pooling kernel itself, so CPU numbers do not change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == output_side(self.output_size, x):
            return x  # each output averages one input (VGG's 7x7 maps at 224-227 px): nothing to compute
        if x.is_cuda and x.requires_grad and torch.are_deterministic_algorithms_enabled():
            return adaptive_avg_pool2d_by_matmul(x, self.output_size)
        return super().forward(x)


class VGGFeatureExtractor(nn.Module):
    """A torchvision VGG truncated after fc7 (the classifier's second ReLU); output `[B, fc_dim]`.

    The submodules are named and indexed as in torchvision's VGG (`features.*`, `classifier.0`,
    `classifier.3`), so torchvision state dicts load key for key. The module is assembled from
    torchvision's `make_layers` and `cfgs` rather than by instantiating `torchvision.models.VGG`,
    whose classifier is fixed at 25088 -> 4096 -> 4096 -> 1000 and so cannot express `width`/`fc_dim`.

    Args:
        variant: "vgg11", "vgg13", "vgg16" or "vgg19" (the paper uses VGG19).
        batch_norm: the `_bn` variants.
        weights: "none" (torchvision's random init), "imagenet" (torchvision's IMAGENET1K_V1 weights,
            downloaded to TORCH_HOME or read from its cache) or a path to a state dict saved from the
            matching torchvision VGG (`torch.save(torchvision.models.vgg19(...).state_dict(), path)`).
        width: multiplies every conv's channel count (< 1 for fast CPU demos; needs weights="none").
        fc_dim: size of fc6 and fc7 (4096 in VGG; other values need weights="none").
        dropout: dropout after fc6 (torchvision's classifier.2); fc7 is returned before its dropout.
        freeze: "none", "features" (the conv stack) or "all". Frozen parameters get
            requires_grad=False and frozen parts stay in eval mode (BatchNorm statistics, dropout).
        pool: "7x7" (torchvision's adaptive pool, fc6 sees 7x7 positions) or "global" (average over
            all positions: fc6 has 49x fewer weights and no position-specific ones; needs weights="none").
    """

    def __init__(
        self,
        variant: str = "vgg19",
        batch_norm: bool = False,
        weights: str = "none",
        width: float = 1.0,
        fc_dim: int = FULL_FC_DIM,
        dropout: float = 0.5,
        freeze: str = "none",
        pool: str = "7x7",
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {sorted(POOLS)}, got {pool!r}")
        if variant not in VGG_CONFIGS:
            raise ValueError(f"unknown VGG variant {variant!r}; expected one of {sorted(VGG_CONFIGS)}")
        if freeze not in FREEZE_MODES:
            raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {freeze!r}")
        if weights != "none" and (width != 1.0 or fc_dim != FULL_FC_DIM or pool != "7x7"):
            raise ValueError(
                f"weights={weights!r} needs the torchvision layer sizes (width=1.0, fc_dim={FULL_FC_DIM}, "
                f"pool=7x7); got width={width}, fc_dim={fc_dim}, pool={pool}. Use weights='none' for another VGG."
            )
        state_dict = _read_weights(weights, variant, batch_norm)
        config = _scaled_config(variant, width)
        last_channels = [v for v in config if v != "M"][-1]
        self.variant, self.batch_norm, self.freeze = variant, batch_norm, freeze
        self.out_dim, self.last_channels = fc_dim, last_channels
        self.features = tv_vgg.make_layers(config, batch_norm=batch_norm)
        side = POOLS[pool]
        self.avgpool = AdaptiveAvgPool2d((side, side))
        self.classifier = nn.Sequential(
            nn.Linear(last_channels * side * side, fc_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_dim, fc_dim),
            nn.ReLU(inplace=True),
        )
        if state_dict is None:
            _init_like_torchvision(self)
        else:
            self._load(state_dict, weights)
        self._apply_freeze()

    def _load(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        expected = f"{source}: not a torchvision {self.variant}{'_bn' if self.batch_norm else ''} state dict"
        try:
            result = self.load_state_dict(_fc7_state_dict(state_dict), strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ValueError(f"{expected} ({exc})") from exc
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{expected}; missing keys {result.missing_keys[:5]}, unexpected keys {result.unexpected_keys[:5]}"
            )

    def _frozen_parts(self) -> list[nn.Module]:
        return {"none": [], "features": [self.features], "all": [self]}[self.freeze]

    def _apply_freeze(self) -> None:
        for part in self._frozen_parts():
            part.requires_grad_(False)
            part.eval()

    def train(self, mode: bool = True) -> VGGFeatureExtractor:
        """Switch train/eval mode; frozen parts always stay in eval mode."""
        super().train(mode)
        for part in self._frozen_parts():
            nn.Module.train(part, False)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images `[B, 3, H, W]` (H, W >= 32) -> fc7 features `[B, out_dim]`."""
        return self.from_frozen(self.features(images), "pool5")

    @property
    def frozen_layer(self) -> str | None:
        """The output of the frozen part: "pool5" (the conv stack's, ``freeze="features"``), "fc7"
        (``freeze="all"``), or None when nothing is frozen."""
        return {"none": None, "features": "pool5", "all": "fc7"}[self.freeze]

    def frozen_output(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images `[B, 3, H, W]` -> the frozen part's output, flattened to `[B, D]`."""
        return self.features(images).flatten(1) if self.frozen_layer == "pool5" else self(images)

    def from_frozen(self, frozen: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """The rest of the network on the frozen part's output: pool5 maps `[B, C, h, w]` (or flattened,
        square) through the pool, fc6 and fc7; fc7 `[B, out_dim]` is already the output."""
        if (layer or self.frozen_layer) == "fc7":
            return frozen
        if frozen.dim() == 2:
            side = int(round((frozen.shape[1] / self.last_channels) ** 0.5))
            frozen = frozen.view(-1, self.last_channels, side, side)
        return self.classifier(torch.flatten(self.avgpool(frozen), 1))
