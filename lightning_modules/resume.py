"""Rerunning a command carries on where it stopped (``resume=true``, the default).

Each (stage, fold) run keeps ``checkpoints/last.ckpt`` (every epoch, written atomically by
``AtomicCheckpointIO``) beside ``best.ckpt``. On a rerun ``plan_fold`` decides per fold:

* **finished**: ``metrics.json`` exists and the saved ``config.yaml`` equals this run's config: skipped, its
  metrics read back;
* **unfinished**, a ``last.ckpt`` of the same config: trained on from it (weights, optimizer, scheduler,
  callback states and, through ``TrainFromSeededState``, the random state), so it ends with the numbers of
  an uninterrupted run;
* otherwise, or with ``resume=false``: trained afresh, after ``clear_fold`` removed its old results.

Keys that only choose which runs a command makes (``SELECTION_KEYS``) are left out of the comparison:
``fold=all`` skips the folds that ``fold=2`` finished.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from callbacks.loggers import WANDB_ID_FILE
from datamodules.preprocess import atomic_save

SELECTION_KEYS = ("stage", "fold", "seeds", "resume")
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
SHOWN_KEYS = 6  # differing keys named in the "trained again" line


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed: a kill never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_save(checkpoint, Path(path))


class KeepEarlyStop(L.Callback):
    """A run resumed after early stopping had ended its training trains no further epoch.

    The restored ``EarlyStopping`` knows it stopped (``stopped_epoch``), but Lightning does not save the
    trainer's ``should_stop``: without this, a run killed between the stop and its ``metrics.json`` would
    train on and could choose another checkpoint.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if any(isinstance(c, EarlyStopping) and c.stopped_epoch > 0 for c in trainer.callbacks):
            trainer.should_stop = True


@dataclass(frozen=True)
class FoldPlan:
    """How a (stage, fold) run starts: ``metrics`` of a finished run (skip it), ``checkpoint`` to train on
    from, or neither (afresh)."""

    metrics: dict | None = None
    checkpoint: Path | None = None


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": leaf}`` of a nested dict; lists and empty dicts are leaves."""
    if isinstance(node, Mapping) and node:
        return {key: leaf for name, child in node.items() for key, leaf in flatten(child, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): node}


def config_differences(saved: Mapping, current: Mapping) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (or that only one has), without the
    ``SELECTION_KEYS``."""
    old, new = flatten(saved), flatten(current)
    missing = object()
    return sorted(
        key
        for key in old.keys() | new.keys()
        if key.split(".")[0] not in SELECTION_KEYS and old.get(key, missing) != new.get(key, missing)
    )


def resolved(cfg: DictConfig) -> dict:
    """``cfg`` as its ``config.yaml`` reads back (resolved, through YAML)."""
    return OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True)))


def checkpoint_epochs(path: Path) -> int:
    """How many epochs the checkpoint at ``path`` has trained."""
    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["epoch"]) + 1


def plan_fold(cfg: DictConfig, out: Path, stale: str | None = None) -> FoldPlan:
    """How the run in fold folder ``out`` starts (see the module doc); prints one line when it is skipped,
    resumed, or trained again for a reason (``stale``: one found by the caller, e.g. changed inputs)."""
    if not cfg.get("resume", True) or not (out / "config.yaml").exists():
        return FoldPlan()
    label = out.relative_to(cfg.paths.output_dir) if out.is_relative_to(cfg.paths.output_dir) else out
    differences = config_differences(OmegaConf.to_container(OmegaConf.load(out / "config.yaml")), resolved(cfg))
    if differences:
        more = f" and {len(differences) - SHOWN_KEYS} more" if len(differences) > SHOWN_KEYS else ""
        named = ", ".join(differences[:SHOWN_KEYS]) + more
        stale = f"its config.yaml differs in {named}"
    if stale:
        _say(f"{label}: trained again: {stale} (resume=false always trains afresh)")
        return FoldPlan()
    if (out / "metrics.json").exists():
        _say(f"{label}: finished (metrics.json, same config): skipped")
        return FoldPlan(metrics=json.loads((out / "metrics.json").read_text()))
    if (out / LAST_CHECKPOINT).exists():
        _say(f"{label}: resuming from {LAST_CHECKPOINT} ({checkpoint_epochs(out / LAST_CHECKPOINT)} epochs done)")
        return FoldPlan(checkpoint=out / LAST_CHECKPOINT)
    return FoldPlan()


@rank_zero_only
def _say(line: str) -> None:
    print(line, flush=True)


def clear_fold(out: Path) -> None:
    """Remove what an earlier run left in fold folder ``out`` (metrics, checkpoints, W&B run id) before
    it is trained afresh, so that nothing of that run passes for this one's (rank zero)."""
    if rank_zero_only.rank != 0:
        return
    (out / "metrics.json").unlink(missing_ok=True)
    (out / WANDB_ID_FILE).unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


@contextmanager
def removed_if_failed(out: Path) -> Iterator[None]:
    """A fold folder this block creates is removed again when the block fails before a checkpoint was
    saved in it: a run that fails before training leaves no half-made fold folder."""
    existed = out.exists()
    try:
        yield
    except BaseException:
        if not existed and not (out / LAST_CHECKPOINT).exists() and rank_zero_only.rank == 0:
            shutil.rmtree(out, ignore_errors=True)
        raise
