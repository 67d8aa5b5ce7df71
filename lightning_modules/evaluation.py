"""Segment and video-level evaluation (§3.4 majority voting), and the cross-rank gather behind it."""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

Table = dict[str, torch.Tensor]  # per-segment columns keyed by name, all with the same number of rows


def majority_vote(clip_index: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Video-level labels by majority vote over each clip's segment predictions (§3.4).

    Each segment votes for its argmax class. A tie between classes is broken by the larger summed
    probability over the clip's segments, and a remaining exact tie by the lower class index.

    Returns (sorted unique clip indices `[M]`, predicted class per clip `[M]`).
    """
    if clip_index.dim() != 1 or probs.dim() != 2 or probs.shape[0] != clip_index.shape[0]:
        raise ValueError(
            f"expected clip_index [N] and probs [N, C]; got {tuple(clip_index.shape)} and {tuple(probs.shape)}"
        )
    clip_ids, row_of_clip = torch.unique(clip_index, sorted=True, return_inverse=True)
    num_classes = probs.shape[1]
    segment_votes = torch.nn.functional.one_hot(probs.argmax(dim=1), num_classes).double()
    votes = torch.zeros(len(clip_ids), num_classes, dtype=torch.float64, device=probs.device)
    votes.index_add_(0, row_of_clip, segment_votes)
    prob_sums = torch.zeros_like(votes).index_add_(0, row_of_clip, probs.double())
    is_top = votes == votes.max(dim=1, keepdim=True).values
    tie_scores = torch.where(is_top, prob_sums, torch.full_like(prob_sums, float("-inf")))
    return clip_ids, tie_scores.argmax(dim=1)


def classification_metrics(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict:
    """Accuracy, UAR, macro F1 and the confusion matrix (rows = true class, columns = predicted).

    uar is the mean recall over the classes present in `targets` (a class that never occurs has no
    recall to average). macro_f1 is torchmetrics' macro F1, which skips classes absent from both
    preds and targets and scores a predicted-but-absent class 0.
    """
    preds, targets = preds.long().cpu(), targets.long().cpu()
    confusion = multiclass_confusion_matrix(preds, targets, num_classes=num_classes)
    support = confusion.sum(dim=1)
    recall = confusion.diagonal().double() / support.clamp_min(1)
    return {
        "accuracy": multiclass_accuracy(preds, targets, num_classes=num_classes, average="micro").item(),
        "uar": recall[support > 0].mean().item(),
        "macro_f1": multiclass_f1_score(preds, targets, num_classes=num_classes, average="macro").item(),
        "confusion_matrix": confusion.tolist(),
    }


def _distributed_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_tables(table: Table | None) -> list[Table]:
    """This process's per-segment table, or under torch.distributed (world size > 1) those of all ranks.

    all_gather_object works for gloo and nccl and lets ranks hold different row counts; a rank that
    saw no segments contributes None so that every rank still joins the collective.
    """
    if _distributed_world_size() == 1:
        return [] if table is None else [table]
    shards: list[Table | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, table)
    return [shard for shard in shards if shard is not None]


def _merge_deduplicated(tables: list[Table]) -> Table:
    """Concatenate tables, sort rows by segment_id and keep the first row of each segment_id."""
    if not tables:
        raise ValueError("no segment predictions on any process")
    merged = {name: torch.cat([table[name] for table in tables]) for name in tables[0]}
    order = torch.sort(merged["segment_id"], stable=True).indices
    merged = {name: column[order] for name, column in merged.items()}
    ids = merged["segment_id"]
    first = torch.ones_like(ids, dtype=torch.bool)
    first[1:] = ids[1:] != ids[:-1]
    return {name: column[first] for name, column in merged.items()}


def _as_table(segment_id: torch.Tensor, columns: dict[str, torch.Tensor]) -> Table:
    table = {"segment_id": segment_id, **columns}
    for name, column in table.items():
        if column.shape[0] != segment_id.shape[0]:
            raise ValueError(f"column {name!r} has {column.shape[0]} rows, segment_id has {segment_id.shape[0]}")
    return {name: column.detach().cpu() for name, column in table.items()}


def gather_segments(segment_id: torch.Tensor, **columns: torch.Tensor) -> Table:
    """Per-segment rows of every rank, one row per segment_id, sorted by segment_id (CPU tensors).

    DistributedSampler pads shards with repeated samples, so duplicate segment_ids are dropped, keeping
    the lowest rank's row. The result is identical on every rank and for any number of processes.
    Every rank must call this (it is a collective under torch.distributed).
    """
    return _merge_deduplicated(_gather_tables(_as_table(segment_id, columns)))


def gather_predictions(
    segment_id: torch.Tensor, clip_index: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(segment_id, clip_index, probs, labels) of all ranks, deduplicated by segment_id and sorted by it."""
    rows = gather_segments(segment_id, clip_index=clip_index, probs=probs, labels=labels)
    return rows["segment_id"], rows["clip_index"], rows["probs"], rows["labels"]


class SegmentPredictions:
    """Per-segment outputs accumulated over one evaluation epoch on this process."""

    def __init__(self) -> None:
        self._parts: dict[str, list[torch.Tensor]] = defaultdict(list)

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts.get("segment_id", []))

    def reset(self) -> None:
        self._parts.clear()

    def add(
        self,
        segment_id: torch.Tensor,
        clip_index: torch.Tensor,
        probs: torch.Tensor,
        labels: torch.Tensor,
        **extra: torch.Tensor,
    ) -> None:
        """Store one batch (moved to CPU); `extra` holds further per-segment rows, e.g. attention weights."""
        batch = {"segment_id": segment_id, "clip_index": clip_index, "probs": probs, "labels": labels, **extra}
        for name, column in batch.items():
            self._parts[name].append(column.detach().cpu())

    def gather(self) -> Table:
        """All ranks' rows, deduplicated and sorted by segment_id (a collective, see gather_segments)."""
        local = None
        if self._parts:
            columns = {name: torch.cat(parts) for name, parts in self._parts.items()}
            local = _as_table(columns.pop("segment_id"), columns)
        return _merge_deduplicated(_gather_tables(local))


def evaluate(
    segment_id: torch.Tensor,
    clip_index: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
) -> dict:
    """Segment-level and video-level (majority vote) metrics of one evaluation set.

    Expects globally gathered, deduplicated rows (see gather_predictions). Returns
    {"segment": metrics + "loss" (mean cross-entropy of the probabilities), "video": metrics,
    "n_segments", "n_clips", "clips": {"clip_index", "pred", "label"} (one entry per clip)}.
    """
    if segment_id.numel() == 0:
        raise ValueError("evaluate() got no segments")
    segment_id, clip_index, probs, labels = (t.detach().cpu() for t in (segment_id, clip_index, probs, labels))
    if torch.unique(segment_id).numel() != segment_id.numel():
        raise ValueError("segment_id holds duplicates; deduplicate with gather_predictions first")
    labels = labels.long()
    probs = probs.double()
    segment = classification_metrics(probs.argmax(dim=1), labels, num_classes)
    true_class_prob = probs.gather(1, labels[:, None]).squeeze(1)
    segment["loss"] = (-true_class_prob.clamp_min(1e-12).log()).mean().item()

    clip_ids, video_pred = majority_vote(clip_index, probs)
    row_of_clip = torch.searchsorted(clip_ids, clip_index)
    lowest = torch.full((len(clip_ids),), num_classes).scatter_reduce(0, row_of_clip, labels, "amin")
    highest = torch.full((len(clip_ids),), -1).scatter_reduce(0, row_of_clip, labels, "amax")
    if (lowest != highest).any():
        raise ValueError(f"clips {clip_ids[lowest != highest].tolist()[:10]} have segments with different labels")
    clip_labels = lowest
    return {
        "segment": segment,
        "video": classification_metrics(video_pred, clip_labels, num_classes),
        "n_segments": int(segment_id.numel()),
        "n_clips": int(clip_ids.numel()),
        "clips": {"clip_index": clip_ids.tolist(), "pred": video_pred.tolist(), "label": clip_labels.tolist()},
    }
