"""Training, evaluation and optimisation shared by the audio, visual and fusion LightningModules."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from lightning_modules.components.augment import mix_tensor
from lightning_modules.evaluation import SegmentPredictions, evaluate

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
SCHEDULERS: tuple[str, ...] = ("none", "cosine", "onecycle", "plateau")
EVAL_STAGES: tuple[str, ...] = ("val", "test")
Batch = dict[str, torch.Tensor]

# Evaluation metrics are computed on predictions already gathered from every rank, so they are logged
# without sync_dist (which would average identical values); Lightning's advice to sync does not apply.
warnings.filterwarnings("ignore", message=r".*sync_dist=True\)` when logging on epoch level.*")


def checkpoint_backbone_kwargs(backbone: Mapping[str, Any]) -> dict[str, Any]:
    """VGG kwargs to record in hparams: weights "none", because a checkpoint's state dict overwrites the
    initial weights and their source (an "imagenet" download, a local .pth) may be absent where it loads."""
    return {**backbone, "weights": "none"}


FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")


def fused_kernels_run_on(params: Sequence[torch.Tensor]) -> bool:
    """Adam's and AdamW's fused kernels (one pass over each tensor instead of a dozen foreach passes) serve these
    parameters: all on CPU or all on CUDA. Their steps differ from the foreach implementation's in the last bits
    of float32 (README, Frozen features computed once)."""
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
        optimizer: "adam", "adamw" or "sgd"; only parameters with requires_grad are optimised; Adam and AdamW
            run their fused kernels where they exist (``fused_kernels_run_on``).
        lr, weight_decay: optimiser settings; momentum is used by "sgd" only.
        scheduler: "none", "cosine" (per epoch over trainer.max_epochs), "onecycle" (per step: warm-up
            to lr over the first 30 % of the training steps, then cosine decay) or "plateau" (x0.1 when
            val/loss has not improved for scheduler_patience epochs).
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
        optimizer: str = "adam",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: str = "none",
        scheduler_patience: int = 5,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.class_names = (
            [str(name) for name in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
        )
        self.optimizer_name, self.lr, self.weight_decay, self.momentum = optimizer, lr, weight_decay, momentum
        self.scheduler_name, self.scheduler_patience = scheduler, scheduler_patience
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
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            adam = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
            optimizer = adam(params, lr=self.lr, weight_decay=self.weight_decay, fused=fused_kernels_run_on(params))
        if self.scheduler_name == "cosine":
            max_epochs = self.trainer.max_epochs
            if not max_epochs or max_epochs < 1:
                raise ValueError("scheduler='cosine' needs trainer.max_epochs >= 1")
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        if self.scheduler_name == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=self.lr, total_steps=int(self.trainer.estimated_stepping_batches), pct_start=0.3
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if self.scheduler_name == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=0.1, patience=self.scheduler_patience
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
        return optimizer
