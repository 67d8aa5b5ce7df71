"""Majority voting, metrics and the cross-rank gather (lightning_modules/evaluation.py)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from lightning_modules.evaluation import (
    SegmentPredictions,
    classification_metrics,
    evaluate,
    gather_predictions,
    majority_vote,
)


def test_majority_vote_picks_the_most_frequent_segment_class():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    clip_ids, preds = majority_vote(torch.tensor([5, 5, 5]), probs)
    assert clip_ids.tolist() == [5]
    assert preds.tolist() == [1]


def test_majority_vote_majority_beats_larger_probability_mass():
    probs = torch.tensor([[0.99, 0.01], [0.45, 0.55], [0.45, 0.55]])
    _, preds = majority_vote(torch.tensor([0, 0, 0]), probs)
    assert probs.sum(0).argmax().item() == 0  # summed probability alone would pick class 0
    assert preds.tolist() == [1]


def test_majority_vote_tie_broken_by_summed_probability():
    # two votes each for classes 0 and 2; class 2's summed probability is larger
    probs = torch.tensor([[0.5, 0.1, 0.4], [0.5, 0.2, 0.3], [0.3, 0.1, 0.6], [0.2, 0.1, 0.7]])
    _, preds = majority_vote(torch.tensor([1, 1, 1, 1]), probs)
    assert probs[:, 0].sum() < probs[:, 2].sum()
    assert preds.tolist() == [2]


def test_majority_vote_tie_ignores_classes_outside_the_tie():
    # votes: 0, 1 (tie); class 2 has the largest summed probability but no vote
    probs = torch.tensor([[0.40, 0.0, 0.39, 0.21], [0.0, 0.41, 0.39, 0.20]])
    _, preds = majority_vote(torch.tensor([0, 0]), probs)
    assert preds.tolist() == [1]


def test_majority_vote_single_segment_clips_and_unsorted_clip_indices():
    clip_index = torch.tensor([9, 2, 9, 4, 2, 9])
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.7, 0.3], [0.6, 0.4]])
    clip_ids, preds = majority_vote(clip_index, probs)
    assert clip_ids.tolist() == [2, 4, 9]
    assert preds.tolist() == [0, 1, 1]


def test_majority_vote_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="clip_index"):
        majority_vote(torch.tensor([0, 1]), torch.rand(3, 2))


def test_classification_metrics_hand_computed():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 2, 2])
    metrics = classification_metrics(preds, targets, num_classes=3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # recalls 2/3, 1/2, 1/1
    assert metrics["uar"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # precisions 1, 1/2, 1/2 -> F1 0.8, 0.5, 2/3
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_confusion_matrix_rows_are_true_classes():
    metrics = classification_metrics(torch.tensor([1, 1, 1]), torch.tensor([0, 0, 0]), num_classes=3)
    assert metrics["confusion_matrix"][0] == [0, 3, 0]
    assert metrics["confusion_matrix"][1] == [0, 0, 0]


def test_uar_averages_only_classes_present_in_targets():
    # class 2 is predicted once but never occurs: it has no recall, so UAR = mean(1/2, 1)
    metrics = classification_metrics(torch.tensor([0, 2, 1]), torch.tensor([0, 0, 1]), num_classes=4)
    assert metrics["uar"] == pytest.approx(0.75)
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def _full_predictions() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seven segments of three clips, as one process would see them without distribution."""
    generator = torch.Generator().manual_seed(0)
    segment_id = torch.tensor([40, 11, 32, 23, 14, 5, 26])
    clip_index = torch.tensor([2, 0, 1, 1, 0, 0, 2])
    labels = torch.tensor([3, 1, 0, 0, 1, 1, 3])
    probs = torch.softmax(torch.randn(7, 4, generator=generator), dim=1)
    return segment_id, clip_index, probs, labels


def test_gather_predictions_single_process_sorts_and_deduplicates():
    segment_id, clip_index, probs, labels = _full_predictions()
    padded = torch.cat([torch.arange(7), torch.tensor([3, 0])])  # two padded repeats, as DistributedSampler does
    ids, clips, gathered_probs, gathered_labels = gather_predictions(
        segment_id[padded], clip_index[padded], probs[padded], labels[padded]
    )
    order = segment_id.argsort()
    assert ids.tolist() == sorted(segment_id.tolist())
    assert torch.equal(clips, clip_index[order])
    assert torch.equal(gathered_probs, probs[order])
    assert torch.equal(gathered_labels, labels[order])


def test_segment_predictions_accumulates_batches_and_extra_columns():
    segment_id, clip_index, probs, labels = _full_predictions()
    store = SegmentPredictions()
    for rows in (slice(0, 4), slice(4, 7), slice(0, 1)):
        store.add(segment_id[rows], clip_index[rows], probs[rows], labels[rows], attention=probs[rows, :2])
    assert len(store) == 8
    rows = store.gather()
    order = segment_id.argsort()
    assert rows["segment_id"].tolist() == sorted(segment_id.tolist())
    assert torch.equal(rows["attention"], probs[order, :2])
    store.reset()
    assert len(store) == 0
    with pytest.raises(ValueError, match="no segment predictions"):
        store.gather()


def _gather_on_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        segment_id, clip_index, probs, labels = _full_predictions()
        # DistributedSampler gives each rank a different shuffled shard, padded with a repeated segment
        shard = torch.tensor(list(DistributedSampler(range(7), num_replicas=world_size, rank=rank, seed=3)))
        gathered = gather_predictions(segment_id[shard], clip_index[shard], probs[shard], labels[shard])
        torch.save({"shard": shard, "gathered": gathered}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_predictions_two_gloo_processes_match_single_process(tmp_path):
    world_size = 2
    mp.spawn(_gather_on_rank, args=(world_size, str(tmp_path / "init"), str(tmp_path)), nprocs=world_size)
    expected = gather_predictions(*_full_predictions())
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world_size)]
    all_shard_rows = torch.cat([result["shard"] for result in results])
    assert len(all_shard_rows) == 8 and len(set(all_shard_rows.tolist())) == 7  # one padded duplicate
    for result in results:
        for got, want in zip(result["gathered"], expected):
            assert torch.equal(got, want)


def test_evaluate_reports_segment_and_video_metrics():
    segment_id = torch.arange(6)
    clip_index = torch.tensor([0, 0, 0, 1, 1, 2])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4], [0.7, 0.3]])
    result = evaluate(segment_id, clip_index, probs, labels, num_classes=2)
    assert result["n_segments"] == 6 and result["n_clips"] == 3
    assert result["segment"]["accuracy"] == pytest.approx(3 / 6)
    true_class_probs = torch.tensor([0.9, 0.8, 0.4, 0.7, 0.4, 0.3])
    assert result["segment"]["loss"] == pytest.approx(-true_class_probs.log().mean().item())
    # clip 0 -> 0 (2 votes of 3), clip 1 -> tie 1:1, summed probs 0.9 vs 1.1 -> 1, clip 2 -> 0
    assert result["clips"] == {"clip_index": [0, 1, 2], "pred": [0, 1, 0], "label": [0, 1, 1]}
    assert result["video"]["accuracy"] == pytest.approx(2 / 3)
    assert result["video"]["confusion_matrix"] == [[1, 0], [1, 1]]
    assert result["video"]["uar"] == pytest.approx((1 + 1 / 2) / 2)


def test_evaluate_rejects_duplicates_and_inconsistent_clip_labels():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    with pytest.raises(ValueError, match="duplicates"):
        evaluate(torch.tensor([1, 1]), torch.tensor([0, 0]), probs, torch.tensor([0, 0]), num_classes=2)
    with pytest.raises(ValueError, match=r"clips \[7\] have segments with different labels"):
        evaluate(torch.tensor([1, 2]), torch.tensor([7, 7]), probs, torch.tensor([0, 1]), num_classes=2)
