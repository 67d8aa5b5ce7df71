"""Fusion-stage data: every segment's audio and visual features, computed once by the frozen extractors."""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import hashlib

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from datamodules.datamodule import EmotionDataModule
from datamodules.preprocess import atomic_save


AUTOCAST_DTYPES: dict[str, torch.dtype] = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content: a retrained extractor invalidates the feature cache, a copied or
    touched one does not."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def feature_cache_key(audio_checkpoint: Path, visual_checkpoint: Path, fold_hash: str, precision: str) -> str:
    """What a fusion feature cache was computed from: both extractors' content, the fold's clips and the
    extraction precision (a fusion model trained on it learnt the features of exactly these checkpoints)."""
    return "|".join([file_digest(audio_checkpoint), file_digest(visual_checkpoint), fold_hash, precision])


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

    ``prepare_data`` (rank zero) runs the best audio and visual checkpoints of the fold, frozen, over
    every prepared segment and caches the features in ``cache_path``; ``setup`` reads that cache. The
    cache is keyed by both checkpoints' content, the fold's ``fold_hash`` and the extraction precision
    (``precision``: the trainer's; "16-mixed" and "bf16-mixed" extract under autocast, others in fp32).
    """

    def __init__(
        self, segments: EmotionDataModule, audio_checkpoint: Path, visual_checkpoint: Path, cache_path: Path,
        fold_hash: str, precision: str = "32-true", batch_size: int = 64, extract_batch_size: int = 16,
    ) -> None:
        super().__init__()
        if segments.test_corpus is not None:
            raise ValueError(
                f"stage=fusion does not run cross-corpus ({segments.name} -> {segments.test_corpus.name}): its "
                "features are extracted from one corpus; run stage=audio, visual or baseline"
            )
        self.segments, self.cache_path = segments, Path(cache_path)
        self.audio_checkpoint, self.visual_checkpoint = Path(audio_checkpoint), Path(visual_checkpoint)
        self.fold_hash, self.precision = fold_hash, str(precision)
        self.batch_size, self.extract_batch_size = batch_size, extract_batch_size
        self.features: dict[str, torch.Tensor] = {}
        self._key: str | None = None

    @property
    def key(self) -> str:
        if self._key is None:
            self._key = feature_cache_key(self.audio_checkpoint, self.visual_checkpoint, self.fold_hash, self.precision)
        return self._key

    @property
    def cache_is_current(self) -> bool:
        """Whether the feature cache holds the features of these checkpoints, fold and precision."""
        return self.cache_path.exists() and torch.load(self.cache_path, mmap=True)["key"] == self.key

    def prepare_data(self) -> None:
        if self.cache_is_current:
            return
        from lightning_modules.audio_module import AudioModule
        from lightning_modules.visual_module import VisualModule

        self.segments.prepare_data()
        self.segments.setup()
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        audio = AudioModule.load_from_checkpoint(self.audio_checkpoint, map_location=device).eval()
        visual = VisualModule.load_from_checkpoint(self.visual_checkpoint, map_location=device).eval()
        dataset = self.segments.dataset([c.clip_id for c in self.segments.clips], inputs=("audio", "faces"))
        loader = DataLoader(dataset, batch_size=self.extract_batch_size, num_workers=self.segments.num_workers)
        dtype = AUTOCAST_DTYPES.get(self.precision)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("audio", "visual", "label", "clip_index", "segment_id")}
        with torch.inference_mode(), autocast:
            for batch in tqdm(loader, desc="fusion features", unit="batch"):
                on_device = {k: v.to(device) for k, v in batch.items()}
                parts["audio"].append(audio.extract_features(on_device).float().cpu())
                parts["visual"].append(visual.extract_features(on_device).float().cpu())
                for name in ("label", "clip_index", "segment_id"):
                    parts[name].append(batch[name])
        features = {k: torch.cat(v) for k, v in parts.items()}
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"key": self.key, **features}, self.cache_path)

    def setup(self, stage: str | None = None) -> None:
        if self.features:
            return
        cached = torch.load(self.cache_path, mmap=True)
        if cached["key"] != self.key:
            raise RuntimeError(f"{self.cache_path} was computed from other checkpoints: run prepare_data")
        self.features = {k: v for k, v in cached.items() if k != "key"}
        self.segments.setup()

    def _loader(self, clip_ids: Sequence[str], shuffle: bool) -> DataLoader:
        ids = set(clip_ids)
        wanted = torch.tensor([i for i, c in enumerate(self.segments.clips) if c.clip_id in ids])
        rows = torch.isin(self.features["clip_index"], wanted).nonzero().flatten()
        return DataLoader(FeatureDataset(self.features, rows), batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.segments.current_fold.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.segments.current_fold.val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.segments.current_fold.test, shuffle=False)

