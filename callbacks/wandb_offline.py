"""Read an offline W&B run back from its files, without a server: ``run-<id>.wandb`` and ``files/media``.

The ``.wandb`` file is a LevelDB-style log of protobuf ``Record`` messages: a 7-byte header
(":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC, length, type: full / first / middle / last). Tables and images logged to a run are files under
``files/media``; the history and summary rows point to them by ``path``.

    run = read_offline_run(next(find_offline_runs("outputs/demo/loso/audio/fold_0")))
    run.job_type, run.summary["test/video_acc"], run.table("test/fold_accuracy")
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_FILE_HEADER = struct.Struct("<4sHB")
_FILE_IDENT, _FILE_MAGIC = b":W&B", 0xBEE1
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK_SIZE = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> Iterator[Any]:
    """The protobuf ``Record`` messages of a ``.wandb`` file, in order (a truncated last record is dropped)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if len(data) < _FILE_HEADER.size:
        raise ValueError(f"{path}: too short for a W&B run file")
    ident, magic, _version = _FILE_HEADER.unpack_from(data)
    if ident != _FILE_IDENT or magic != _FILE_MAGIC:
        raise ValueError(f"{path}: not a W&B run file (header {data[:7]!r})")
    pos, pending = _FILE_HEADER.size, b""
    while pos + _CHUNK_HEADER.size <= len(data):
        left_in_block = _BLOCK_SIZE - pos % _BLOCK_SIZE
        if left_in_block < _CHUNK_HEADER.size:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding at the end of a block or file
            pos += left_in_block
            continue
        chunk = data[pos + _CHUNK_HEADER.size : pos + _CHUNK_HEADER.size + length]
        pos += _CHUNK_HEADER.size + length
        if len(chunk) < length:
            break
        if kind == _FULL:
            payload = chunk
        elif kind == _FIRST:
            pending = chunk
            continue
        elif kind == _MIDDLE:
            pending += chunk
            continue
        elif kind == _LAST:
            payload, pending = pending + chunk, b""
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at byte {pos}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _item_key(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _set_nested(target: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


@dataclass
class OfflineRun:
    """What an offline run holds: identity, config, history rows and the final summary."""

    run_dir: Path
    run_id: str
    name: str
    group: str
    job_type: str
    project: str
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def files_dir(self) -> Path:
        return self.run_dir / "files"

    def media_path(self, key: str) -> Path:
        """The file behind a logged table or image (the last logged value of ``key``)."""
        for row in reversed(self.history):
            value = row.get(key)
            if isinstance(value, dict) and "path" in value:
                return self.files_dir / value["path"]
        value = self.summary.get(key)
        if isinstance(value, dict) and "path" in value:
            return self.files_dir / value["path"]
        raise KeyError(f"{self.run_dir}: no table or image logged as {key!r}")

    def table(self, key: str) -> tuple[list[str], list[list]]:
        """(columns, rows) of the last table logged as ``key``; a chart's data lives at ``<key>_table``."""
        payload = json.loads(self.media_path(key).read_text())
        return payload["columns"], payload["data"]

    def values(self, key: str) -> list:
        """Every value of ``key`` in the history, in logging order."""
        return [row[key] for row in self.history if key in row]


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse ``<run_dir>/run-<id>.wandb`` (an ``offline-run-*`` folder) into an OfflineRun."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file (is this an offline W&B run folder?)")
    run: OfflineRun | None = None
    config: dict = {}
    summary: dict = {}
    history: list[dict] = []
    exit_code = None
    for record in read_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = OfflineRun(run_dir, r.run_id, r.display_name, r.run_group, r.job_type, r.project)
            for item in r.config.update:
                _set_nested(config, _item_key(item), json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                _set_nested(config, _item_key(item), json.loads(item.value_json))
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _set_nested(row, _item_key(item), json.loads(item.value_json))
            history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set_nested(summary, _item_key(item), json.loads(item.value_json))
        elif kind == "exit":
            exit_code = record.exit.exit_code
    if run is None:
        raise ValueError(f"{files[0]}: no run record")
    run.config, run.history, run.exit_code = config, history, exit_code
    run.summary = {key: value for key, value in summary.items() if not key.startswith("_")}
    return run


def find_offline_runs(root: str | Path) -> list[Path]:
    """Every ``offline-run-*`` folder below ``root``, oldest first."""
    return sorted(Path(root).rglob("offline-run-*"), key=lambda p: p.name)


def main(argv: list[str] | None = None) -> None:
    """``python -m callbacks.wandb_offline outputs/demo/loso``: one line per offline run below a folder."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", type=Path, help="a folder holding offline-run-* folders at any depth")
    args = parser.parse_args(argv)
    keys = (
        "cv/objective",
        "cv/test/video_accuracy_mean",
        "cv/test/video_accuracy_std",
        "test/video_acc",
        "test/seg_acc",
    )
    for path in find_offline_runs(args.root):
        run = read_offline_run(path)
        values = "  ".join(f"{key}={run.summary[key]:.3f}" for key in keys if key in run.summary)
        print(f"{run.job_type:<11} {run.name:<20} {run.group:<28} {values}  {path}")


if __name__ == "__main__":
    main()
