"""``prepare_corpus``: every clip of a corpus not yet in the cache prepared by the workers, the clips another
run is preparing waited for, and the report written; the run stops when too many clips fail.
"""

from __future__ import annotations

import json
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from datamodules.atomic import atomic_write_text
from datamodules.clips import Clip, IndexResult
from datamodules.preprocess.cache_files import (
    cache_folder,
    cache_key,
    cached_verdict,
    clip_content,
    load_clip,
    remove_stale_temporaries,
)
from datamodules.preprocess.pipeline import check_failure_settings
from datamodules.preprocess.progress import ChunkLines, clip_progress
from datamodules.preprocess.report import build_report, failure_line, failure_summary
from datamodules.preprocess.workers import ClipOutcome, clip_outcomes


class TooManyFailuresError(RuntimeError):
    """More than ``max_failed_fraction`` of a corpus's clips failed: more likely a bug than a bad corpus."""


@dataclass
class PreparedCorpus:
    """What ``prepare_corpus`` hands to the DataModule: usable clips, their cache files and the report."""

    clips: list[Clip]
    files: dict[str, Path]
    metas: dict[str, dict]
    report: dict = field(default_factory=dict)


@dataclass
class _Progress:
    """What a run has learnt so far, clip by clip, shown on ``bar``; it stops past ``most_failures``."""

    metas: dict[str, dict]
    dropped: dict[str, dict]
    most_failures: float
    bar: tqdm | ChunkLines | None = None
    processed_now: list[str] = field(default_factory=list)

    @property
    def failed_too_often(self) -> bool:
        """More clips failed than ``max_failed_fraction`` allows: the run stops."""
        return len(self.dropped) > self.most_failures

    def collect(self, outcome: ClipOutcome) -> None:
        if outcome.failure is None:
            self.metas[outcome.clip_id] = outcome.meta
            if outcome.fresh:
                self.processed_now.append(outcome.clip_id)
        else:
            self.dropped[outcome.clip_id] = outcome.failure
            tqdm.write(f"dropped {failure_line(outcome.clip_id, outcome.failure)}")
        if self.bar is not None:
            self.bar.update()


def prepare_corpus(
    clips: list[Clip],
    cfg: dict,
    cache_root: Path,
    *,
    corpus: str,
    source: str | None = None,
    workers: int = 2,
    indexed: IndexResult | None = None,
    progress: bool = True,
) -> PreparedCorpus:
    """Prepare every clip not yet in the cache, in parallel worker processes, and write the report.

    ``source`` (the corpus's resolved root) is part of the cache key: see ``cache_key``. ``indexed`` is
    what the indexer found around ``clips`` (excluded, skipped and other files), for the report. A clip
    that fails is dropped with the step and the reason; when more than ``cfg["max_failed_fraction"]`` of
    the clips fail, the run stops with ``TooManyFailuresError`` naming the most common reasons (the report
    so far is written first). Clips that another run is preparing at the same time are waited for at the end.
    """
    check_failure_settings(cfg)
    start = time.perf_counter()
    key = cache_key(cfg, source)
    folder = cache_folder(cache_root, corpus, cfg, source)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(clip_content(cfg), indent=2, sort_keys=True), folder / "preprocess.json")

    files = {c.clip_id: folder / f"{c.clip_id}.pt" for c in clips}
    remove_stale_temporaries(folder, files.values())
    run = _Progress(metas={}, dropped={}, most_failures=cfg["max_failed_fraction"] * len(clips))
    for clip in clips:
        if files[clip.clip_id].exists():
            run.metas[clip.clip_id] = load_clip(files[clip.clip_id])["meta"]
        elif (verdict := cached_verdict(clip, files[clip.clip_id])) is not None:
            run.dropped[clip.clip_id] = verdict
    todo = [c for c in clips if c.clip_id not in run.metas and c.clip_id not in run.dropped]

    work_start = time.perf_counter()
    run.bar = clip_progress(len(todo), f"prepare {corpus}", enabled=progress)
    busy = _prepare_clips(todo, cfg, files, workers, run, wait=False)
    if busy and not run.failed_too_often:
        tqdm.write(f"prepare {corpus}: waiting for {len(busy)} clip(s) that another run is preparing")
        _prepare_clips(busy, cfg, files, workers, run, wait=True)
    run.bar.close()
    work_s = time.perf_counter() - work_start

    kept = [c for c in clips if c.clip_id in run.metas]
    report = build_report(
        kept,
        run.metas,
        run.dropped,
        indexed or IndexResult(clips=list(clips)),
        corpus=corpus,
        key=key,
        folder=folder,
        processed_now=run.processed_now,
        work_s=work_s,
        total_s=time.perf_counter() - start,
    )
    atomic_write_text(json.dumps(report, indent=2), folder / "report.json")
    if run.failed_too_often:
        raise TooManyFailuresError(failure_summary(report, cfg["max_failed_fraction"]))
    return PreparedCorpus(clips=kept, files={c.clip_id: files[c.clip_id] for c in kept}, metas=run.metas, report=report)


def _prepare_clips(
    todo: list[Clip], cfg: dict, files: dict[str, Path], workers: int, run: _Progress, *, wait: bool
) -> list[Clip]:
    """Prepare ``todo`` into ``run`` until it has failed too often; returns the clips another run holds
    (none when ``wait``: then this run waits for each of them)."""
    if not todo:
        return []
    results = clip_outcomes(todo, cfg, files, workers, wait)
    by_id = {clip.clip_id: clip for clip in todo}
    busy = []
    with closing(results):
        for outcome in results:
            if outcome.busy:
                busy.append(by_id[outcome.clip_id])
                continue
            run.collect(outcome)
            if run.failed_too_often:
                break
    return busy
