"""data.balance=classes: training segments drawn so that every class comes as often."""

import torch

from datamodules.datamodule import SegmentDataset, class_balanced_sampler


def test_a_rare_class_is_drawn_as_often_as_a_common_one():
    labels = torch.tensor([0] * 900 + [1] * 100)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    drawn = labels[list(class_balanced_sampler(labels))]
    torch.random.set_rng_state(generator_state)
    assert len(drawn) == len(labels)
    assert 0.45 < drawn.float().mean().item() < 0.55  # shuffled, class 1 would be 0.10


def test_segment_labels_repeat_each_clip_label_once_per_segment():
    records = [{"segment_times": torch.zeros(n, 2)} for n in (3, 1, 2)]
    dataset = SegmentDataset(records, [0, 1, 2], [2, 0, 1], [0, 3, 4], [])
    assert dataset.segment_labels.tolist() == [2, 2, 2, 0, 1, 1]
    assert [int(dataset[i]["label"]) for i in range(len(dataset))] == dataset.segment_labels.tolist()
