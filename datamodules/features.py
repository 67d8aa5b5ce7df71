"""Fusion-stage data: every segment's audio and visual features, computed once by the frozen extractors and
kept in ``datamodules.feature_cache`` (the extractors come in as callables: no LightningModule is imported here)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.datamodule import EmotionDataModule, class_balanced_sampler
from datamodules.feature_cache import Extractor, FeatureCache

EXTRACTED: tuple[str, ...] = ("audio", "visual")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content: a retrained extractor invalidates the feature cache, a copied or
    touched one does not."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def extracted_with(cache_root: Path, checkpoints: Mapping[str, Path]) -> bool:
    """Whether a fusion fold's feature cache ``cache_root`` holds features of exactly these extractor
    checkpoints (by content), e.g. ``{"audio": ..., "visual": ...}``: its fusion model learnt those."""
    for name, checkpoint in checkpoints.items():
        digest = file_digest(checkpoint)
        keys = [json.loads(path.read_text()) for path in (cache_root / name).glob("*/key.json")]
        if not any(key.get("checkpoint") == digest for key in keys):
            return False
    return True


class FeatureDataset(Dataset):
    def __init__(self, features: dict[str, torch.Tensor], rows: torch.Tensor) -> None:
        self.features, self.rows = features, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        return {
            "audio_feat": self.features["audio"][row],
            "visual_feat": self.features["visual"][row],
            "label": self.features["label"][row],
            "clip_index": self.features["clip_index"][row],
            "segment_id": self.features["segment_id"][row],
        }


class FeatureDataModule(L.LightningDataModule):
    """The fold's segments as (audio feature, visual feature) pairs for the fusion network.

    ``prepare_data`` (rank zero) runs each frozen extractor over every prepared clip's segments once, into a
    ``FeatureCache`` under ``<cache_root>/<audio|visual>/``; ``setup`` reads both. ``extractors`` maps "audio"
    and "visual" to a function that loads the extractor, called only when its cache lacks clips, and returns a
    callable from a batch of segments (``{"audio": ...}`` or ``{"faces": ...}``) to their features; ``keys`` says
    what each one's features depend on (its checkpoint's content, the extraction precision), to which the
    clip cache's key is added.
    """

    def __init__(
        self,
        segments: EmotionDataModule,
        extractors: Mapping[str, Callable[[], Extractor]],
        keys: Mapping[str, dict],
        cache_root: Path,
        batch_size: int = 64,
        extract_batch_size: int = 16,
    ) -> None:
        super().__init__()
        if segments.test_corpus is not None:
            raise ValueError(
                f"stage=fusion does not run cross-corpus ({segments.name} -> {segments.test_corpus.name}): its "
                "features are extracted from one corpus; run stage=audio, visual or baseline"
            )
        self.segments, self.extractors, self.keys = segments, extractors, keys
        self.cache_root, self.batch_size, self.extract_batch_size = Path(cache_root), batch_size, extract_batch_size
        self.features: dict[str, torch.Tensor] = {}

    @cached_property
    def caches(self) -> dict[str, FeatureCache]:
        return {
            name: FeatureCache(
                self.cache_root / name,
                {"clips": self.segments.cache_folder.name, **self.keys[name]},
                batch_rows=self.extract_batch_size,
            )
            for name in EXTRACTED
        }

    @property
    def cache_is_current(self) -> bool:
        """Whether features of these extractors (their keys) have been cached: a retrained one has another key."""
        return all(cache.shards for cache in self.caches.values())

    def segment_inputs(self, name: str) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        """Each prepared clip's segments as the ``name`` extractor reads them."""
        for clip, record in zip(self.segments.clips, self.segments.records):
            if name == "audio":
                yield clip.clip_id, {"audio": record["audio"]}
            else:
                yield clip.clip_id, {"faces": record["face_frames"][record["face_index"]]}

    def prepare_data(self) -> None:
        self.segments.prepare_data()
        self.segments.setup()
        for name, cache in self.caches.items():
            if {clip.clip_id for clip in self.segments.clips} - cache.cached_ids():
                cache.fill(self.segment_inputs(name), self.extractors[name](), total=len(self.segments.clips))

    def setup(self, stage: str | None = None) -> None:
        if self.features:
            return
        self.segments.setup()
        cached = {name: cache.load() for name, cache in self.caches.items()}
        clip_ids = [clip.clip_id for clip in self.segments.clips]
        if any(clip_id not in cached[name] for name in EXTRACTED for clip_id in clip_ids):
            raise RuntimeError(f"{self.cache_root} lacks features of these extractors: run prepare_data")
        counts = [int(record["segment_times"].shape[0]) for record in self.segments.records]
        labels = [self.segments.classes.index(clip.label) for clip in self.segments.clips]
        self.features = {
            **{name: torch.cat([cached[name][clip_id] for clip_id in clip_ids]).float() for name in EXTRACTED},
            "label": torch.tensor(labels).repeat_interleave(torch.tensor(counts)),
            "clip_index": torch.arange(len(clip_ids)).repeat_interleave(torch.tensor(counts)),
            "segment_id": torch.arange(sum(counts)),
        }

    def _loader(self, clip_ids: Sequence[str], shuffle: bool) -> DataLoader:
        ids = set(clip_ids)
        wanted = torch.tensor([i for i, c in enumerate(self.segments.clips) if c.clip_id in ids])
        rows = torch.isin(self.features["clip_index"], wanted).nonzero().flatten()
        sampler = None
        if shuffle and self.segments.balance == "classes":
            sampler, shuffle = class_balanced_sampler(self.features["label"][rows]), False
        return DataLoader(
            FeatureDataset(self.features, rows), batch_size=self.batch_size, shuffle=shuffle, sampler=sampler
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.segments.current_fold.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.segments.current_fold.val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.segments.current_fold.test, shuffle=False)
