"""Per-clip preprocessing (paper §3.1-3.3), the content-keyed clip cache, the worker pool and the report.

One clip becomes one cache file ``<cache_dir>/<corpus>/<key>/<clip_id>.pt`` where ``key`` hashes the
preprocessing config: change any parameter and the clips are prepared again into a new folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from datamodules.clips import Clip
from datamodules.decode import BadInputError, decode_clip
from datamodules.faces import FaceDetector, build_face_track
from datamodules.mfcc import mfcc_images
from datamodules.vad import detect_speech_span, plot_vad, trim_to_speech

PIPELINE_VERSION = 1  # bump when the code changes what a cache file holds


def cache_key(preprocess_cfg: dict, source: str | None = None) -> str:
    """Short hash of the preprocessing config, the pipeline version and the corpus ``source`` (its resolved
    root), so that two corpora whose clip ids coincide never share cache files."""
    blob = json.dumps({"version": PIPELINE_VERSION, "preprocess": preprocess_cfg, "source": source}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file in the same folder, then rename it: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` with no partial file left behind (see ``_write_atomically``)."""
    _write_atomically(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: Path) -> None:
    _write_atomically(Path(path), lambda tmp: tmp.write_text(text))


def preprocess_clip(clip: Clip, cfg: dict, detector: FaceDetector | None) -> dict:
    """Decode, trim by VAD, cut MFCC images and the matching face segments of one clip.

    Raises ``BadInputError`` naming the file and the reason when the clip cannot be used.
    """
    sample_rate = cfg["sample_rate"]
    decoded = decode_clip(clip.path, sample_rate=sample_rate, with_video=cfg["video"])
    if cfg["video"] and decoded.frames is None:
        raise BadInputError(clip.path, "no video stream")
    duration_s = len(decoded.audio) / sample_rate
    speech, span, vad_found = trim_to_speech(decoded.audio, sample_rate, cfg["vad"])
    images, segment_times = mfcc_images(speech, sample_rate, **cfg["mfcc"])
    segment_times = segment_times + span[0]
    record: dict[str, Any] = {"audio": images, "segment_times": segment_times.float()}
    meta = {
        "clip_id": clip.clip_id,
        "subject": clip.subject,
        "label": clip.label,
        "duration_s": round(duration_s, 4),
        "vad_found": bool(vad_found),
        "vad_span_s": [round(float(span[0]), 4), round(float(span[1]), 4)],
        "n_segments": int(images.shape[0]),
        "n_frames": 0,
        "face_detected_frames": 0,
        "face_fallback_frames": 0,
    }
    if cfg["video"]:
        faces = cfg["faces"]
        track = build_face_track(
            decoded.frames, decoded.frame_times, segment_times, detector,
            size=faces["size"], margin=faces["margin"], fallback=faces["fallback"], path=clip.path,
            frames_per_segment=faces["frames_per_segment"],
        )
        record["face_frames"] = track.face_frames
        record["face_index"] = track.face_index
        meta.update(
            n_frames=int(track.face_frames.shape[0]),
            face_detected_frames=int(track.detected_frames),
            face_fallback_frames=int(track.fallback_frames),
        )
    record["meta"] = meta
    return record


_worker_detector: FaceDetector | None = None


def _init_worker(cfg: dict, torch_threads: int) -> None:
    global _worker_detector
    torch.set_num_threads(torch_threads)
    if cfg["video"]:
        faces = cfg["faces"]
        _worker_detector = FaceDetector(
            min_confidence=faces["min_confidence"], detect_max_side=faces["detect_max_side"],
            min_face_size=faces["min_face_size"],
        )


def _prepare_one(clip: Clip, cfg: dict, out_path: Path) -> tuple[str, dict | None, str | None]:
    """Worker task: prepare one clip into ``out_path``; returns (clip_id, meta, error)."""
    try:
        record = preprocess_clip(clip, cfg, _worker_detector)
    except BadInputError as err:
        return clip.clip_id, None, str(err)
    atomic_save(record, out_path)
    return clip.clip_id, record["meta"], None


@dataclass
class PreparedCorpus:
    """What ``prepare_corpus`` hands to the DataModule: usable clips, their cache files and the report."""

    clips: list[Clip]
    files: dict[str, Path]
    metas: dict[str, dict]
    report: dict = field(default_factory=dict)


def load_clip(path: Path) -> dict:
    """A prepared clip, memory-mapped: tensors are read lazily and shared between DataLoader workers."""
    return torch.load(path, mmap=True, weights_only=True)


def cache_folder(cache_root: str | Path, corpus: str, cfg: dict, source: str | None = None) -> Path:
    return Path(cache_root) / corpus / cache_key(cfg, source)


def prepare_corpus(
    clips: list[Clip],
    cfg: dict,
    cache_root: Path,
    *,
    corpus: str,
    source: str | None = None,
    workers: int = 2,
    index_skipped: list[tuple[str, str]] | None = None,
    progress: bool = True,
) -> PreparedCorpus:
    """Prepare every clip not yet in the cache, in parallel worker processes, and write the report.

    ``source`` (the corpus's resolved root) is part of the cache key: see ``cache_key``.
    """
    start = time.perf_counter()
    key = cache_key(cfg, source)
    folder = cache_folder(cache_root, corpus, cfg, source)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # left by a killed run; never a finished clip
        stale.unlink(missing_ok=True)
    atomic_write_text(json.dumps(cfg, indent=2, sort_keys=True), folder / "preprocess.json")

    files = {c.clip_id: folder / f"{c.clip_id}.pt" for c in clips}
    todo = [c for c in clips if not files[c.clip_id].exists()]
    metas: dict[str, dict] = {}
    dropped: dict[str, str] = {}
    processed_now: list[str] = []
    for clip in clips:
        if files[clip.clip_id].exists():
            metas[clip.clip_id] = load_clip(files[clip.clip_id])["meta"]

    work_start = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"prepare {corpus}", unit="clip", disable=not progress or not todo)
    if workers <= 1 or len(todo) <= 1:
        _init_worker(cfg, torch.get_num_threads())
        results = (_prepare_one(c, cfg, files[c.clip_id]) for c in todo)
        for result in results:
            _collect(result, metas, dropped, processed_now, bar)
    elif todo:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(cfg, threads)
        ) as pool:
            futures = [pool.submit(_prepare_one, c, cfg, files[c.clip_id]) for c in todo]
            for future in as_completed(futures):
                _collect(future.result(), metas, dropped, processed_now, bar)
    bar.close()
    work_s = time.perf_counter() - work_start

    kept = [c for c in clips if c.clip_id in metas]
    report = build_report(
        kept, metas, dropped, index_skipped or [], corpus=corpus, key=key, folder=folder,
        n_indexed=len(clips), processed_now=processed_now, work_s=work_s, total_s=time.perf_counter() - start,
    )
    atomic_write_text(json.dumps(report, indent=2), folder / "report.json")
    return PreparedCorpus(clips=kept, files={c.clip_id: files[c.clip_id] for c in kept}, metas=metas, report=report)


def _collect(
    result: tuple[str, dict | None, str | None], metas: dict, dropped: dict, processed_now: list, bar: tqdm
) -> None:
    clip_id, meta, error = result
    if error is None:
        metas[clip_id] = meta
        processed_now.append(clip_id)
    else:
        dropped[clip_id] = error
        tqdm.write(f"skipped {clip_id}: {error}")
    bar.update()


def build_report(
    kept: list[Clip], metas: dict[str, dict], dropped: dict[str, str], index_skipped: list[tuple[str, str]],
    *, corpus: str, key: str, folder: Path, n_indexed: int, processed_now: list[str], work_s: float,
    total_s: float,
) -> dict:
    """Counts a researcher checks before training: per class and subject, segments, faces, drops."""
    kept_metas = [metas[c.clip_id] for c in kept]
    used_frames = sum(m["n_frames"] for m in kept_metas)
    new_media_s = sum(metas[c]["duration_s"] for c in processed_now)
    return {
        "corpus": corpus,
        "cache": str(folder),
        "key": key,
        "clips_indexed": n_indexed,
        "clips_prepared": len(kept),
        "clips_per_class": dict(sorted(Counter(c.label for c in kept).items())),
        "clips_per_subject": dict(sorted(Counter(c.subject for c in kept).items())),
        "segments": sum(m["n_segments"] for m in kept_metas),
        "segments_per_class": _segments_per_class(kept, metas),
        "vad_not_found": sorted(c.clip_id for c in kept if not metas[c.clip_id]["vad_found"]),
        "face_frames": used_frames,
        "face_detection_rate": (
            sum(m["face_detected_frames"] for m in kept_metas) / used_frames if used_frames else None
        ),
        "face_fallback_frames": sum(m["face_fallback_frames"] for m in kept_metas),
        "dropped": dict(sorted(dropped.items())),
        "index_skipped": [list(item) for item in index_skipped],
        "clips_processed_now": len(processed_now),
        "seconds": round(total_s, 2),
        "clips_per_second": round(len(processed_now) / work_s, 3) if processed_now else None,
        "media_seconds_per_second": round(new_media_s / work_s, 3) if processed_now else None,
    }


def _segments_per_class(kept: list[Clip], metas: dict[str, dict]) -> dict[str, int]:
    counts: Counter = Counter()
    for clip in kept:
        counts[clip.label] += metas[clip.clip_id]["n_segments"]
    return dict(sorted(counts.items()))


def format_report(report: dict) -> str:
    """The report as a short human-readable table."""
    lines = [
        f"corpus {report['corpus']}  cache {report['cache']}",
        f"clips: {report['clips_prepared']} prepared of {report['clips_indexed']} indexed, "
        f"{report['clips_processed_now']} processed now in {report['seconds']} s"
        + (f" ({report['clips_per_second']} clips/s, {report['media_seconds_per_second']} s of media/s)"
           if report["clips_per_second"] else ""),
        f"segments: {report['segments']}",
        "per class: " + ", ".join(
            f"{k} {v} clips/{report['segments_per_class'][k]} seg" for k, v in report["clips_per_class"].items()
        ),
        "per subject: " + ", ".join(f"{k} {v}" for k, v in report["clips_per_subject"].items()),
    ]
    if report["face_frames"]:
        lines.append(
            f"faces: {report['face_frames']} frames, detection rate {report['face_detection_rate']:.3f}, "
            f"fallback crops {report['face_fallback_frames']}"
        )
    lines.append(f"VAD found no speech (whole clip kept): {len(report['vad_not_found'])}")
    lines.append(f"dropped: {len(report['dropped'])}")
    lines += [f"  {clip_id}: {reason}" for clip_id, reason in report["dropped"].items()]
    if report["index_skipped"]:
        lines.append(f"skipped by the indexer: {len(report['index_skipped'])}")
        lines += [f"  {path}: {reason}" for path, reason in report["index_skipped"][:20]]
    return "\n".join(lines)


def plot_vad_spans(clips: list[Clip], cfg: dict, out_dir: Path) -> list[Path]:
    """A VAD plot (waveform, speech-band ratio, energy, kept span) per clip, to check the VAD by eye."""
    paths = []
    vad_cfg = {k: v for k, v in cfg["vad"].items() if k != "enabled"}
    for clip in clips:
        audio = decode_clip(clip.path, sample_rate=cfg["sample_rate"], with_video=False).audio
        result = detect_speech_span(audio, cfg["sample_rate"], **vad_cfg)
        paths.append(plot_vad(audio, cfg["sample_rate"], result, Path(out_dir) / f"{clip.clip_id}.png"))
    return paths
