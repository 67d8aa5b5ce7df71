"""Training, evaluation and optimisation shared by the audio, visual and fusion LightningModules."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from lightning_modules.components.augment import mix_tensor
from lightning_modules.evaluation import SegmentPredictions, evaluate

ADAM: dict[str, Any] = {"_target_": "torch.optim.Adam", "_partial_": True}  # the default optimizer config
VGG: dict[str, Any] = {"_target_": "lightning_modules.components.vgg.VGGFeatureExtractor"}  # the default backbone
EVAL_STAGES: tuple[str, ...] = ("val", "test")
Batch = dict[str, torch.Tensor]

# Evaluation metrics are computed on predictions already gathered from every rank, so they are logged
# without sync_dist (which would average identical values); Lightning's advice to sync does not apply.
warnings.filterwarnings("ignore", message=r".*sync_dist=True\)` when logging on epoch level.*")


def build_backbone(config: Mapping[str, Any]) -> nn.Module:
    """The network that a backbone config (configs/audio_backbone/, configs/visual_backbone/) names by its
    ``_target_``, built with the config's other keys."""
    network = instantiate(config, _convert_="all")
    if not isinstance(network, nn.Module):
        raise ValueError(f"a backbone config names its network class by _target_, got {dict(config)}")
    return network


def checkpoint_backbone_kwargs(backbone: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone config to record in hparams: weights "none", because a checkpoint's state dict overwrites the
    initial weights and their source (an "imagenet" download, a local .pth) may be absent where it loads."""
    return {**backbone, "weights": "none"}


def plain_training_args(training: dict[str, Any]) -> None:
    """EmotionModule's arguments among a subclass's ``**training`` as plain containers, in place (before the
    subclass's save_hyperparameters), so that hparams.yaml and checkpoints hold no tuples or OmegaConf objects."""
    if training.get("class_names") is not None:
        training["class_names"] = list(training["class_names"])
    for name in ("optimizer", "scheduler"):
        if training.get(name) is not None:
            training[name] = OmegaConf.to_container(OmegaConf.create(training[name]), resolve=True)


FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")


def fused_kernels_run_on(params: Sequence[torch.Tensor]) -> bool:
    """An optimiser's fused kernels (Adam's, AdamW's, SGD's, Adagrad's: one pass over each tensor instead of a dozen
    foreach passes) serve these parameters: all on CPU or all on CUDA. Their steps differ from the foreach
    implementation's in the last bits of float32 (README, Frozen features computed once)."""
    return len({p.device.type for p in params}) == 1 and params[0].device.type in FUSED_OPTIMIZER_DEVICES


class EmotionModule(L.LightningModule):
    """Segment classifier with segment- and video-level (majority vote) evaluation.

    Subclasses build their network, call `self.save_hyperparameters()` and implement
    `extract_features(batch) -> [B, D]`; the default `segment_outputs` applies `self.head` to those
    features. Validation and test accumulate per-segment probabilities, gather them from all ranks at
    epoch end (deduplicated by segment_id), and log global metrics that are identical on every rank
    (`val/seg_acc`, `val/video_acc`, `val/video_uar`, `val/video_f1`, `val/loss`, ...; `test/*` alike).
    The full result dicts of the last epoch are kept in `self.last_eval["val"|"test"]`.

    Args:
        num_classes: number of emotion classes.
        class_names: names in class-index order (defaults to "0", "1", ...).
        optimizer: the Hydra config of a partial optimiser (``_target_``, ``_partial_: true`` and its settings
            but the learning rate, e.g. ``{"_target_": "torch.optim.AdamW", "_partial_": True, "weight_decay":
            0.05}``; Adam by default), called with the parameters that have requires_grad and ``lr``. An
            optimiser that takes ``fused`` (Adam, AdamW) runs its fused kernels where they exist
            (``fused_kernels_run_on``) unless the config sets it.
        lr: the learning rate (the peak of a one-cycle schedule).
        scheduler: the Hydra config of a partial schedule of lightning_modules/schedules.py (``cosine``,
            ``one_cycle``, ``plateau``): ``(optimizer, trainer)`` -> Lightning's lr_scheduler dict; None keeps
            the learning rate constant.
        label_smoothing: cross-entropy label smoothing in training (validation loss never smooths).
        mixup_alpha: > 0 trains on mixup batches (Zhang et al., 2018): the tensors named by the module's
            ``input_keys`` are mixed with a shuffled copy of the batch by a weight ~ Beta(alpha, alpha),
            and the loss is the same mix of the two labels' losses.
        channels_last: run convolutions on channels-last tensors (faster on tensor-core GPUs).
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        optimizer: Mapping[str, Any] = ADAM,
        lr: float = 1e-4,
        scheduler: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.class_names = (
            [str(name) for name in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
        )
        # plain containers in the partials' settings (betas as a list, never a ListConfig in the optimiser state)
        self.optimizer_factory, self.lr = instantiate(optimizer, _convert_="all"), lr
        self.scheduler_factory = None if scheduler is None else instantiate(scheduler, _convert_="all")
        self.label_smoothing = label_smoothing
        if mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {mixup_alpha}")
        self.mixup_alpha = mixup_alpha
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.last_eval: dict[str, dict] = {}
        self._predictions = {stage: SegmentPredictions() for stage in EVAL_STAGES}

    input_keys: tuple[str, ...] = ()  # the batch tensors the network reads (mixed by mixup)

    def _finish_init(self) -> None:
        """Convert conv weights to the configured memory format; subclasses call this last in __init__."""
        self.to(memory_format=self.memory_format)

    def extract_features(self, batch: Batch) -> torch.Tensor:
        """Per-segment feature vectors `[B, D]` (the fusion stage's input)."""
        raise NotImplementedError

    def segment_outputs(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits `[B, num_classes]`, further per-segment tensors to accumulate in evaluation)."""
        return self.head(self.extract_features(batch)), {}

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.segment_outputs(batch)[0]

    def _training_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with the configured label smoothing (training only)."""
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        labels = batch["label"]
        if self.mixup_alpha > 0:
            weight = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
            permutation = torch.randperm(labels.shape[0], device=labels.device)
            mixed = {key: mix_tensor(batch[key], permutation, weight) for key in self.input_keys}
            logits, _ = self.segment_outputs({**batch, **mixed})
            loss = weight * self._training_loss(logits, labels) + (1.0 - weight) * self._training_loss(
                logits, labels[permutation]
            )
        else:
            logits, _ = self.segment_outputs(batch)
            loss = self._training_loss(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        batch_size = labels.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, sync_dist=True, prog_bar=True, batch_size=batch_size)
        self.log("train/acc", accuracy, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)
        return loss

    def _evaluation_step(self, batch: Batch, stage: str) -> None:
        logits, extra = self.segment_outputs(batch)
        probs = torch.softmax(logits.float(), dim=1)
        self._predictions[stage].add(batch["segment_id"], batch["clip_index"], probs, batch["label"], **extra)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._predictions["val"].reset()

    def on_test_epoch_start(self) -> None:
        self._predictions["test"].reset()

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def extra_evaluation(self, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        """Further scalar metrics from the gathered per-segment rows (logged as `<stage>/<name>`)."""
        return {}

    # Scores a validation epoch from its logged metrics (``val/<name>``: value), logged as ``val/selection``
    # for the checkpoint to monitor; set by callbacks.checkpoint.SelectionScore, None logs no score.
    selection_score: Callable[[Mapping[str, float]], float] | None = None

    def _finish_evaluation(self, stage: str) -> None:
        rows = self._predictions[stage].gather()
        self._predictions[stage].reset()
        result = evaluate(rows["segment_id"], rows["clip_index"], rows["probs"], rows["labels"], self.num_classes)
        result["extra"] = self.extra_evaluation(rows)
        result["class_names"] = self.class_names
        segment, video = result["segment"], result["video"]
        metrics = {
            "loss": segment["loss"],
            "seg_acc": segment["accuracy"],
            "seg_uar": segment["uar"],
            "seg_f1": segment["macro_f1"],
            "video_acc": video["accuracy"],
            "video_uar": video["uar"],
            "video_f1": video["macro_f1"],
            **result["extra"],
        }
        # Already global and identical on every rank, so no reduction; logged on all ranks so that
        # ModelCheckpoint/EarlyStopping can monitor them everywhere.
        logged = {f"{stage}/{name}": float(value) for name, value in metrics.items()}
        self.log_dict(logged, sync_dist=False)
        if stage == "val" and self.selection_score is not None:  # float64: the tie-break's resolution
            self.log("val/selection", torch.tensor(self.selection_score(logged), dtype=torch.float64), sync_dist=False)
        if not self.trainer.sanity_checking:
            self.last_eval[stage] = result

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Features for the fusion stage's cache, with the ids that align them to segments and clips."""
        ids = {key: batch[key] for key in ("segment_id", "clip_index", "label") if key in batch}
        return {**ids, "features": self.extract_features(batch).float()}

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("every parameter is frozen: nothing to optimise")
        settings: dict[str, Any] = {"lr": self.lr}
        factory = self.optimizer_factory
        if "fused" in inspect.signature(factory).parameters and "fused" not in factory.keywords:
            settings["fused"] = fused_kernels_run_on(params)
        optimizer = factory(params, **settings)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer, self.trainer)}
