"""Where clips are prepared: this process's thread limits, the pool of worker processes, and the task each
worker runs on a clip (``_prepare_one``: under the clip's lock, into its cache file or its verdict).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from datamodules.atomic import atomic_save, atomic_write_text
from datamodules.clips import Clip
from datamodules.decode import BadInputError, decoder_threads, set_decoder_threads
from datamodules.faces import FaceDetector, WholeFrameFaces
from datamodules.preprocess.cache_files import cached_verdict, claim_clip, file_signature, load_clip, verdict_path
from datamodules.preprocess.pipeline import ClipFailure, face_detector, preprocess_clip, step

_worker_detector: FaceDetector | WholeFrameFaces | None = None
THREAD_VARIABLES: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
MAX_CHUNK = 16  # clips a worker is handed at once, at most


def available_cores() -> int:
    """The cores this process may run on (a SLURM job's or a container's share, not the whole machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int, video: bool = True, cores: int | None = None) -> int:
    """Each worker's share of the cores (``available_cores`` by default), at least one thread; one thread
    whatever the share when the corpus has no ``video``: a clip's audio work (decoding, VAD, MFCCs) is too small
    to gain from more and loses much with many (on 16 cores, one worker with 16 threads prepared RAVDESS speech
    4.4x slower than with one, two with 8 each no faster than one thread; README "Preprocessing speed")."""
    if not video:
        return 1
    return max(1, (cores or available_cores()) // workers)


def limit_threads(threads: int) -> None:
    """Make this process compute with ``threads`` threads: torch's (and its OpenMP and MKL pools), any other
    OpenMP or BLAS pool loaded already (numpy's OpenBLAS, by ``threadpoolctl``) or later (the environment), and
    FFmpeg's video decoder (``set_decoder_threads``)."""
    from threadpoolctl import threadpool_limits

    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    torch.set_num_threads(threads)
    threadpool_limits(threads)
    set_decoder_threads(threads)


@contextmanager
def computing_with(threads: int | None) -> Iterator[None]:
    """Inside the block this process computes with ``threads`` threads (``limit_threads``), after it with those
    it had (training follows in the same process). None: as it is."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    saved = thread_settings()
    try:
        with threadpool_limits(limits=None):  # puts the BLAS and OpenMP pools back as they were on leaving
            limit_threads(threads)
            yield
    finally:
        torch.set_num_threads(saved["torch"])
        set_decoder_threads(saved["decoder"])
        for name in THREAD_VARIABLES:
            if saved[name] is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = saved[name]


def thread_settings() -> dict:
    """The thread counts this process computes with: torch's, FFmpeg's decoder's and the environment's."""
    return {
        "torch": torch.get_num_threads(),
        "decoder": decoder_threads(),
        **{name: os.environ.get(name) for name in THREAD_VARIABLES},
    }


def _init_worker(cfg: dict, threads: int | None) -> None:
    """A worker's start: its share of the threads (None: this process's as they are) and its face detector."""
    global _worker_detector
    if threads is not None:
        limit_threads(threads)
    _worker_detector = face_detector(cfg)


def chunks(items: list, workers: int, most: int = MAX_CHUNK) -> list[list]:
    """``items`` cut into runs handed out in order to ``workers`` at once, each an eighth of a worker's share of
    what is left (guided scheduling), at most ``most`` long so that results stream back: the runs shrink to
    single items at the end, so no worker waits long while another finishes (with equal runs of a quarter of a
    share each, the workers idled about 12 % of a demo corpus's wall time)."""
    runs, first = [], 0
    while first < len(items):
        size = max(1, min(most, math.ceil((len(items) - first) / (4 * workers))))
        runs.append(items[first : first + size])
        first += size
    return runs


def pool_start_method(threads: int) -> str:
    """How worker processes computing with ``threads`` threads each are started.

    ``fork`` on Linux when each computes with one thread: a forked worker starts in milliseconds with everything
    this process has imported. GNU OpenMP's thread pool does not survive a fork (a forked child that computes
    with more than one thread hangs once this process has computed with several), and macOS's system libraries
    do not survive one at all, so other workers are forked from a ``forkserver`` that imported the pipeline once
    and never computed (seconds to start)."""
    return "fork" if threads == 1 and sys.platform.startswith("linux") else "forkserver"


def worker_pool(workers: int, cfg: dict) -> ProcessPoolExecutor:
    """``workers`` processes preparing clips of ``cfg``, each with ``threads_per_worker`` threads, started by
    ``pool_start_method``. Each sets its thread counts itself (``limit_threads``): a forked process inherits
    its parent's environment and pools, not the share it should compute with."""
    threads = threads_per_worker(workers, cfg["video"])
    method = pool_start_method(threads)
    context = get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["__main__", __name__])
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(cfg, threads))


@dataclass(frozen=True)
class ClipOutcome:
    """What became of one clip: prepared (``meta``; ``fresh`` when by this run), dropped (``failure``), or
    ``busy``: another run holds its lock, ask again later."""

    clip_id: str
    meta: dict | None = None
    failure: dict | None = None
    fresh: bool = False
    busy: bool = False


def _prepare_one(clip: Clip, cfg: dict, out_path: Path, wait: bool) -> ClipOutcome:
    """Worker task: prepare one clip into ``out_path`` under its lock (``claim_clip``), unless another run
    did so meanwhile; ``busy`` when another run holds it and ``wait`` is False.

    A failure on bad input is stored beside the cache (``verdict_path``), so the next run does not decode
    the file again while it is unchanged; other exceptions (a bug, memory) are tried again next run.
    """
    with claim_clip(out_path, wait) as held:
        if not held:
            return ClipOutcome(clip.clip_id, busy=True)
        if out_path.exists():
            return ClipOutcome(clip.clip_id, meta=load_clip(out_path)["meta"])
        if (verdict := cached_verdict(clip, out_path)) is not None:
            return ClipOutcome(clip.clip_id, failure=verdict)
        try:
            record = preprocess_clip(clip, cfg, _worker_detector)
            with step("save"):
                atomic_save(record, out_path)
                verdict_path(out_path).unlink(missing_ok=True)
        except ClipFailure as failure:
            described = failure.describe(clip.path)
            if isinstance(failure.error, BadInputError):
                stored = {**described, "signature": file_signature(clip.path)}
                atomic_write_text(json.dumps(stored, indent=2), verdict_path(out_path))
            return ClipOutcome(clip.clip_id, failure=described)
    return ClipOutcome(clip.clip_id, meta=record["meta"], fresh=True)


def clip_outcomes(
    todo: list[Clip], cfg: dict, files: dict[str, Path], workers: int, wait: bool
) -> Iterator[ClipOutcome]:
    """``_prepare_one``'s outcome for each clip of ``todo``: in this process when ``workers <= 1`` or there is
    one clip, else from a pool of ``workers`` processes."""
    if workers <= 1 or len(todo) <= 1:
        return _results_in_this_process(todo, cfg, files, wait)
    return _results_in_workers(todo, cfg, files, workers, wait)


def _results_in_this_process(todo: list[Clip], cfg: dict, files: dict[str, Path], wait: bool) -> Iterator[ClipOutcome]:
    """``_prepare_one``'s outcome for each clip of ``todo``, one after the other, with this process's threads
    (one for a corpus without video: ``threads_per_worker``)."""
    with computing_with(None if cfg["video"] else threads_per_worker(1, video=False)):
        _init_worker(cfg, None)
        yield from _outcomes(todo, cfg, [files[clip.clip_id] for clip in todo], wait)


def _outcomes(clips: list[Clip], cfg: dict, files: list[Path], wait: bool) -> Iterator[ClipOutcome]:
    """``_prepare_one``'s outcome for each of ``clips`` (written to the matching ``files``), as each finishes."""
    for clip, file in zip(clips, files):
        yield _task_result(lambda: _prepare_one(clip, cfg, file, wait), clip)  # noqa: B023 (called at once)


def _prepare_chunk(clips: list[Clip], cfg: dict, files: list[Path], wait: bool) -> list[ClipOutcome]:
    """Worker task: ``_outcomes`` of a run of clips. Only the outcomes (a clip's meta) travel back: the arrays
    go to the cache file straight from the worker."""
    return list(_outcomes(clips, cfg, files, wait))


def _results_in_workers(
    todo: list[Clip], cfg: dict, files: dict[str, Path], workers: int, wait: bool
) -> Iterator[ClipOutcome]:
    """``_prepare_one``'s outcomes from ``workers`` processes, a chunk (``chunks``) at a time as each finishes;
    closing the generator cancels the chunks not started yet."""
    with worker_pool(workers, cfg) as pool:
        futures = {
            pool.submit(_prepare_chunk, chunk, cfg, [files[clip.clip_id] for clip in chunk], wait): chunk
            for chunk in chunks(todo, workers)
        }
        try:
            for future in as_completed(futures):
                try:
                    yield from future.result()
                except Exception as error:  # the worker died or its results could not be sent back
                    yield from (worker_failure(clip, error) for clip in futures[future])
        finally:
            pool.shutdown(cancel_futures=True)


def _task_result(result: Callable[[], ClipOutcome], clip: Clip) -> ClipOutcome:
    """The task's outcome; what fails outside a step (a result that could not be sent, a verdict that could not
    be stored) fails the clip as step "worker"."""
    try:
        return result()
    except Exception as error:
        return worker_failure(clip, error)


def worker_failure(clip: Clip, error: Exception) -> ClipOutcome:
    """A clip failed outside its steps (step "worker"): a worker that died, a result that could not be sent."""
    return ClipOutcome(clip.clip_id, failure=ClipFailure("worker", error).describe(clip.path))
