"""Features of a frozen extractor, computed once per item and cached on disk.

One mechanism for every frozen computation: the visual stage's frozen VGG part on each distinct face crop,
and the fusion stage's frozen extractors on each segment. The caller hands the extractor in as a callable
(inputs -> ``[n, D]`` features) with a key saying everything the features depend on (the inputs' cache key,
the extractor's weights, the layer); this module knows nothing of networks or LightningModules.

Layout: ``<root>/<hash of the key>/`` holds ``key.json``, shards ``shard_00000.pt`` ... of about
``shard_rows`` rows each (``{"ids": [...], "counts": [...], "features": fp16 [R, D]}``: the rows of the items
``ids``, ``counts[i]`` rows each, in order), and ``index.json`` listing the shards. Every file is written to a
temporary name and renamed, and the index after its shard, so a killed fill leaves whole shards that the next
fill keeps; a 100k-frame corpus is a few dozen files, not 100k.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from datamodules.preprocess import atomic_save, atomic_write_text

Extractor = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def key_hash(key: dict) -> str:
    """Short hash of a JSON-able key: the cache folder's name."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of tensors' values, in order: a network's weights, whatever file or seed they came from."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Per item id the ``[n, D]`` fp16 features of its ``n`` inputs, computed once by a frozen extractor.

    ``fill`` computes the items not cached yet (``items`` yields each id with its inputs, a dict of tensors
    with ``n`` rows; the extractor maps up to ``batch_rows`` rows at a time); ``load`` maps every cached
    item id to its rows, memory-mapped.
    """

    def __init__(self, root: str | Path, key: dict, shard_rows: int = 4096, batch_rows: int = 64) -> None:
        self.key, self.shard_rows, self.batch_rows = key, shard_rows, batch_rows
        self.folder = Path(root) / key_hash(key)

    @property
    def shards(self) -> list[str]:
        """The shard files written so far (``index.json``)."""
        index = self.folder / "index.json"
        return json.loads(index.read_text())["shards"] if index.exists() else []

    def cached_ids(self) -> set[str]:
        return {item for shard in self.shards for item in torch.load(self.folder / shard, mmap=True)["ids"]}

    def fill(
        self, items: Iterable[tuple[str, dict[str, torch.Tensor]]], extractor: Extractor, total: int | None = None
    ) -> int:
        """Compute and store the features of the ``items`` not cached yet; returns how many items were computed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "key.json").exists():
            atomic_write_text(json.dumps(self.key, indent=2, sort_keys=True), self.folder / "key.json")
        done, computed = self.cached_ids(), 0
        ids: list[str] = []
        parts: list[torch.Tensor] = []
        with torch.inference_mode():
            for item, inputs in tqdm(items, total=total, desc="frozen features", unit="item", disable=total == 0):
                if item in done:
                    continue
                parts.append(torch.cat([extractor(batch).half().cpu() for batch in self._batches(inputs)]))
                ids.append(item)
                computed += 1
                if sum(len(part) for part in parts) >= self.shard_rows:
                    self._write_shard(ids, parts)
                    ids, parts = [], []
        if ids:
            self._write_shard(ids, parts)
        return computed

    def _batches(self, inputs: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        rows = len(next(iter(inputs.values())))
        for first in range(0, rows, self.batch_rows):
            yield {name: value[first : first + self.batch_rows] for name, value in inputs.items()}

    def _write_shard(self, ids: list[str], parts: list[torch.Tensor]) -> None:
        shards = self.shards
        name = f"shard_{len(shards):05d}.pt"
        counts = [len(part) for part in parts]
        atomic_save({"ids": ids, "counts": counts, "features": torch.cat(parts)}, self.folder / name)
        atomic_write_text(json.dumps({"shards": [*shards, name]}), self.folder / "index.json")

    def load(self) -> dict[str, torch.Tensor]:
        """Item id -> its fp16 ``[n, D]`` rows, for every cached item."""
        features: dict[str, torch.Tensor] = {}
        for shard in self.shards:
            stored = torch.load(self.folder / shard, mmap=True)
            features.update(zip(stored["ids"], stored["features"].split(stored["counts"])))
        return features
