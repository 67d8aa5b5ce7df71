"""Run-time leakage guard: the clips the Trainer's data loaders actually serve must match the fold.

``datamodules.splits.assert_no_leakage`` checks the ``Fold`` objects; this checks what reaches the
model. ``LeakageGuard`` reads the datasets inside the train, val and test loaders the Trainer uses,
maps them to clip ids (``SegmentDataset.clip_indices`` and a ``FeatureDataset``'s ``clip_index``
column are positions in the ``EmotionDataModule``'s ``clips``) and calls ``assert_loaders_match_fold``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from datamodules.clips import Clip
from datamodules.corpora import natural_key
from datamodules.datamodule import EmotionDataModule, SegmentDataset
from datamodules.features import FeatureDataset
from datamodules.splits import Fold

SPLITS: tuple[str, ...] = ("train", "val", "test")
SHOWN_OFFENDERS = 5  # clip ids named per problem


def served_clip_ids(dataset: Dataset, clips: Sequence[Clip]) -> set[str]:
    """Ids of the clips ``dataset`` yields segments of; its clip indices are positions in ``clips``."""
    if isinstance(dataset, SegmentDataset):
        positions = list(dataset.clip_indices)
    elif isinstance(dataset, FeatureDataset):
        positions = dataset.features["clip_index"][dataset.rows].unique().tolist()
    else:
        raise TypeError(f"cannot tell which clips a {type(dataset).__name__} serves")
    return {clips[position].clip_id for position in positions}


def loader_datasets(loaders: Any) -> list[Dataset]:
    """The datasets of a DataLoader, or of a list, tuple or dict of them (as the Trainer holds them)."""
    if loaders is None:
        return []
    if isinstance(loaders, DataLoader):
        return [loaders.dataset]
    if isinstance(loaders, Mapping):
        loaders = loaders.values()
    return [dataset for loader in loaders for dataset in loader_datasets(loader)]


def _named(ids: Iterable[str]) -> str:
    ordered = sorted(ids, key=natural_key)
    more = f" and {len(ordered) - SHOWN_OFFENDERS} more" if len(ordered) > SHOWN_OFFENDERS else ""
    return f"{ordered[:SHOWN_OFFENDERS]}{more}"


def assert_loaders_match_fold(served: Mapping[str, Collection[str]], fold: Fold, clips: Sequence[Clip]) -> None:
    """Raise ``AssertionError`` naming the offenders when what the loaders serve breaks ``fold``.

    ``served`` maps a split ("train", "val", "test") to the clip ids its loader yields. Problems: a
    split serves a clip outside its part of the fold; train or val serves a test clip; and, for a
    subject-grouped fold (``fold.by_subject``), train or val serves a clip of a test subject.
    """
    subject_of = {clip.clip_id: clip.subject for clip in clips}
    part_of_fold = {"train": set(fold.train), "val": set(fold.val), "test": set(fold.test)}
    test_subjects = set(fold.test_subjects)
    problems = []
    for split, ids in served.items():
        outside = set(ids) - part_of_fold[split]
        if outside:
            problems.append(
                f"{split} loader serves {len(outside)} clip(s) not in the fold's {split} part: {_named(outside)}"
            )
        if split == "test":
            continue
        test_clips = set(ids) & part_of_fold["test"]
        if test_clips:
            problems.append(f"{split} loader serves {len(test_clips)} test clip(s): {_named(test_clips)}")
        if fold.by_subject:
            leaked_subjects = {subject_of[clip_id] for clip_id in ids} & test_subjects
            if leaked_subjects:
                problems.append(f"{split} loader serves clips of test subject(s) {_named(leaked_subjects)}")
    if problems:
        raise AssertionError(f"fold {fold.index} ({fold.name}) data loaders leak: " + "; ".join(problems))


class LeakageGuard(L.Callback):
    """Checks the clips the Trainer's loaders serve against the fold, before any batch is used.

    Train at ``on_train_start`` (the first fit hook at which the train loader exists), val at every
    ``on_validation_start`` (the sanity check included) and test at ``on_test_start``.

    Args:
        datamodule: the corpus's EmotionDataModule (also behind the fusion stage's FeatureDataModule):
            its ``clips`` resolve clip indices and its ``current_fold`` is the fold being run.
    """

    def __init__(self, datamodule: EmotionDataModule) -> None:
        self.datamodule = datamodule

    def check(self, split: str, loaders: Any) -> None:
        """Raise ``AssertionError`` when ``loaders`` (the Trainer's loaders of ``split``) break the fold.

        In a cross-corpus run the test loader's clip indices are positions in the test corpus's clips.
        """
        corpus_clips = self.datamodule.corpus_of(split).clips
        served = set().union(*(served_clip_ids(dataset, corpus_clips) for dataset in loader_datasets(loaders)))
        test_corpus = self.datamodule.corpus_of("test")
        every_clip = (
            self.datamodule.clips if test_corpus is self.datamodule else [*self.datamodule.clips, *test_corpus.clips]
        )
        assert_loaders_match_fold({split: served}, self.datamodule.current_fold, every_clip)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check("train", trainer.train_dataloader)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check("val", trainer.val_dataloaders)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check("test", trainer.test_dataloaders)
