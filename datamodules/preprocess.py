"""Per-clip preprocessing (paper §3.1-3.3), the content-keyed clip cache, the worker pool and the report.

One clip becomes one cache file ``<cache_dir>/<corpus>/<key>/<clip_id>.pt`` where ``key`` hashes the
preprocessing config: change any parameter and the clips are prepared again into a new folder.

Every step of a clip (decode, duration, vad, mfcc, faces, save) runs under one guard: an exception in
one clip drops that clip, with the step and the reason, in the report and on the terminal, and the other
clips go on. A clip dropped for bad input leaves ``<clip_id>.dropped.json`` instead of a cache file.

Several runs may fill one cache at once (array jobs on a shared filesystem): every file is written to a
temporary name and renamed, and a clip is prepared only by the run that holds its lock (``claim_clip``);
the others go on with other clips and read it when it is done.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from datamodules.clips import Clip, IndexResult
from datamodules.decode import (
    BadInputError,
    DecodedClip,
    decode_audio,
    decode_clip,
    decode_frames,
    decode_video,
    decoder_threads,
    set_decoder_threads,
)
from datamodules.faces import (
    FEW_FACES_CHOICES,
    FILL_RULES,
    FaceDetector,
    FaceTrack,
    FewFacesError,
    WholeFrameFaces,
    build_face_track,
    few_faces_reason,
    keyframes_of,
)
from datamodules.mfcc import mfcc_images, segment_length_s, segment_times_for_duration
from datamodules.vad import detect_speech_span, plot_vad, trim_to_speech

PIPELINE_VERSION = 1  # bump when the code changes what a cache file holds
RUN_SETTINGS: tuple[str, ...] = ("max_failed_fraction",)  # how a run behaves, not what a clip holds
NO_SPEECH_CHOICES: tuple[str, ...] = ("drop", "keep")


def clip_content(preprocess_cfg: dict) -> dict:
    """The preprocessing values that decide what a cache file holds: all but ``RUN_SETTINGS``."""
    return {name: value for name, value in preprocess_cfg.items() if name not in RUN_SETTINGS}


def cache_key(preprocess_cfg: dict, source: str | None = None) -> str:
    """Short hash of the preprocessing config (``clip_content``), the pipeline version and the corpus
    ``source`` (its resolved root), so that two corpora whose clip ids coincide never share cache files."""
    blob = json.dumps(
        {"version": PIPELINE_VERSION, "preprocess": clip_content(preprocess_cfg), "source": source}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file in the same folder, then rename it: readers never see a partial file.

    The temporary name ``.<name>.<host>-<pid>.tmp`` is unique to the writing process, also across the nodes
    of a cluster sharing one filesystem."""
    writer = f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"
    tmp = path.with_name(f".{path.name}.{writer}.tmp")
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


class ClipFailure(Exception):
    """One clip could not be prepared: the step that failed (decode, duration, vad, mfcc, faces, save; worker
    outside them) and the exception it raised."""

    def __init__(self, step: str, error: Exception):
        self.step, self.error = step, error
        super().__init__(f"{step}: {type(error).__name__}: {error}")

    def describe(self, path: Path) -> dict:
        """The report's entry: the file, the step, the exception's type and its message."""
        reason = self.error.reason if isinstance(self.error, BadInputError) else str(self.error) or repr(self.error)
        return {"path": str(path), "step": self.step, "error": type(self.error).__name__, "reason": reason}


class TooManyFailuresError(RuntimeError):
    """More than ``max_failed_fraction`` of a corpus's clips failed: more likely a bug than a bad corpus."""


@contextmanager
def step(name: str) -> Iterator[None]:
    """Run one step of a clip's preprocessing: any exception in it becomes a ``ClipFailure`` naming the step."""
    try:
        yield
    except Exception as error:
        raise ClipFailure(name, error) from error


def check_duration(audio: np.ndarray, sample_rate: int, mfcc_cfg: dict, path: Path) -> None:
    """``BadInputError`` when the clip is shorter than one MFCC segment (0.655 s with the paper's values)."""
    timing = {k: mfcc_cfg[k] for k in ("window_ms", "hop_ms") if k in mfcc_cfg}
    minimum_s = segment_length_s(mfcc_cfg["window"], **timing)
    duration_s = audio.size / sample_rate
    if duration_s < minimum_s:
        raise BadInputError(
            path,
            f"too short: {duration_s:.3f} s of audio, one segment of {mfcc_cfg['window']} MFCC frames "
            f"needs {minimum_s:.3f} s",
        )


def check_failure_settings(cfg: dict) -> None:
    """A ``ValueError`` for a ``no_speech``, ``max_failed_fraction`` or face rule value that means nothing, before
    any clip is tried (a typo must not turn into a dropped corpus)."""
    if cfg["no_speech"] not in NO_SPEECH_CHOICES:
        raise ValueError(f"no_speech must be one of {NO_SPEECH_CHOICES}, got {cfg['no_speech']!r}")
    if not 0 <= cfg["max_failed_fraction"] <= 1:
        raise ValueError(f"max_failed_fraction must be in [0, 1], got {cfg['max_failed_fraction']}")
    faces = cfg["faces"]
    if faces["few_faces"] not in FEW_FACES_CHOICES:
        raise ValueError(f"faces.few_faces must be one of {FEW_FACES_CHOICES}, got {faces['few_faces']!r}")
    if faces["fill"] not in FILL_RULES:
        raise ValueError(f"faces.fill must be one of {FILL_RULES}, got {faces['fill']!r}")
    if not 0 <= faces["min_detection_rate"] <= 1:
        raise ValueError(f"faces.min_detection_rate must be in [0, 1], got {faces['min_detection_rate']}")
    if frames_decoded(faces) not in FRAMES_DECODED_CHOICES:
        raise ValueError(
            f"faces.frames_decoded must be one of {FRAMES_DECODED_CHOICES}, got {faces['frames_decoded']!r}"
        )
    keyframes_of(faces)  # its own checks
    if sequence_segments(cfg) not in SEQUENCE_SEGMENTS_CHOICES:
        raise ValueError(
            f"sequence_segments must be one of {SEQUENCE_SEGMENTS_CHOICES}, got {cfg['sequence_segments']!r}"
        )
    if sequence_segments(cfg) == "frame" and frames_decoded(faces) != "all":
        raise ValueError("sequence_segments=frame cuts a clip at its decoded frames: it needs faces.frames_decoded=all")


def no_speech_reason(vad_cfg: dict) -> str:
    """Why the VAD kept nothing, in the terms of its settings."""
    gate_db = vad_cfg["min_rel_energy_db"]
    gate = "" if gate_db is None else f" within {-gate_db:g} dB of the loudest"
    return (
        f"no speech found by the VAD: no {vad_cfg['window_ms']:g} ms window has a speech-band ratio >= "
        f"{vad_cfg['ratio_threshold']:g}{gate} (after a median over {vad_cfg['median_windows']} windows); "
        "no_speech=keep keeps such clips whole"
    )


def find_speech(
    audio: np.ndarray, sample_rate: int, cfg: dict, path: Path
) -> tuple[np.ndarray, tuple[float, float], bool]:
    """The span of ``audio`` the VAD keeps (``trim_to_speech``); ``BadInputError`` for digital silence, and
    for a clip without speech unless ``cfg["no_speech"]`` is ``"keep"`` (then the whole clip is kept)."""
    if not np.any(audio):
        raise BadInputError(path, "silent: every sample is zero")
    speech, span, found = trim_to_speech(audio, sample_rate, cfg["vad"])
    if not found and cfg["no_speech"] == "drop":
        raise BadInputError(path, no_speech_reason(cfg["vad"]))
    return speech, span, found


FRAMES_DECODED_CHOICES: tuple[str, ...] = ("segments", "all")


def decode(clip: Clip, cfg: dict) -> DecodedClip:
    """The clip's audio and frames: an image sequence (``clip.extra["frames"]``, CK+) at ``cfg["sequence_fps"]``,
    any other clip by FFmpeg; ``BadInputError`` for a video corpus's clip without frames. With
    ``faces.frames_decoded: segments`` a video's frames are left for ``segment_frames``, which decodes only
    those its speech segments show."""
    if "frames" in clip.extra:
        return decode_frames(clip.extra["frames"], cfg["sequence_fps"])
    decoded = decode_audio(clip.path, sample_rate=cfg["sample_rate"], with_video=cfg["video"])
    if cfg["video"] and not decoded.has_video:
        raise BadInputError(clip.path, "audio only: no video stream, and this corpus is audio-visual (video: true)")
    if cfg["video"] and frames_decoded(cfg["faces"]) == "all":
        return decode_video(decoded, clip.path)
    return decoded


def frames_decoded(faces: dict) -> str:
    """Which frames of a video are decoded (``faces.frames_decoded``); a config written before the setting
    existed decoded all of them."""
    return faces.get("frames_decoded", "all")


def segment_frames(decoded: DecodedClip, path: Path, segment_times: torch.Tensor) -> DecodedClip:
    """``decoded`` with the frames shown from its first segment's start to its last segment's end, unless its
    frames are decoded already (``frames_decoded: all``, image sequences)."""
    if decoded.frames is not None:
        return decoded
    span_s = (float(segment_times[:, 0].min()), float(segment_times[:, 1].max()))
    return decode_video(decoded, path, span_s)


@dataclass(frozen=True)
class SpeechSegments:
    """The MFCC images of the span of a clip the VAD keeps, and where they lie in the clip."""

    images: torch.Tensor  # uint8 [K, 3, n_mfcc, window]
    times: torch.Tensor  # float32 [K, 2] start and end seconds in the clip
    span_s: tuple[float, float]  # the span the VAD kept
    vad_found: bool  # False: no speech found, the whole clip kept (no_speech=keep)


def speech_segments(decoded: DecodedClip, cfg: dict, path: Path) -> SpeechSegments:
    """The duration, vad and mfcc steps of a decoded clip (§3.1-3.2), each under ``step``."""
    sample_rate = cfg["sample_rate"]
    with step("duration"):
        check_duration(decoded.audio, sample_rate, cfg["mfcc"], path)
    with step("vad"):
        speech, span, vad_found = find_speech(decoded.audio, sample_rate, cfg, path)
    with step("mfcc"):
        images, times = mfcc_images(speech, sample_rate, **cfg["mfcc"])
    return SpeechSegments(images, (times + span[0]).float(), span, vad_found)


SEQUENCE_SEGMENTS_CHOICES: tuple[str, ...] = ("time", "frame")


def sequence_segments(cfg: dict) -> str:
    """How a clip without audio is cut into segments (``sequence_segments``); a config written before the setting
    existed cut by time."""
    return cfg.get("sequence_segments", "time")


def silent_segments(decoded: DecodedClip, cfg: dict) -> torch.Tensor:
    """Segment times ``[K, 2]`` of a clip without audio. ``sequence_segments: time`` (the default): laid out as
    the MFCC segments of ``cfg["mfcc"]`` would be over audio as long (``segment_times_for_duration``);
    ``frame``: one segment per decoded frame (``frame_segments``), voted per clip like any segments."""
    if sequence_segments(cfg) == "frame":
        if decoded.frame_times is None:
            raise ValueError("sequence_segments=frame needs the clip's frames decoded (faces.frames_decoded: all)")
        return frame_segments(decoded.frame_times)
    timing = {k: cfg["mfcc"][k] for k in ("window", "shift", "window_ms", "hop_ms") if k in cfg["mfcc"]}
    return segment_times_for_duration(decoded.duration_s, **timing)


def frame_segments(frame_times: np.ndarray) -> torch.Tensor:
    """One segment ``[K, 2]`` per frame, from halfway after the frame before to halfway before the frame after
    (so that each segment holds its own frame whatever the rounding of the times), the ends half the first or
    last gap out."""
    times = np.asarray(frame_times, dtype=np.float64)
    if times.size == 1:
        return torch.tensor([[times[0] - 0.5, times[0] + 0.5]], dtype=torch.float32)
    middles = (times[1:] + times[:-1]) / 2
    starts = np.concatenate([[times[0] - (middles[0] - times[0])], middles])
    ends = np.concatenate([middles, [times[-1] + (times[-1] - middles[-1])]])
    return torch.from_numpy(np.stack([starts, ends], axis=1)).float()


def segment_faces(
    decoded: DecodedClip,
    segment_times: torch.Tensor,
    faces: dict,
    detector: FaceDetector | WholeFrameFaces,
    path: Path,
    fill: str | None = None,
) -> FaceTrack:
    """The face track of the segments (§3.3) under ``faces`` (the config's ``faces``), its fill rule unless
    ``fill`` names another."""
    return build_face_track(
        decoded.frames,
        decoded.frame_times,
        segment_times,
        detector,
        size=faces["size"],
        margin=faces["margin"],
        fallback=faces["fallback"],
        path=path,
        frames_per_segment=faces["frames_per_segment"],
        fill=fill or faces["fill"],
        keyframes=keyframes_of(faces),
    )


def face_segments(
    decoded: DecodedClip, record: dict, faces: dict, detector: FaceDetector | WholeFrameFaces, path: Path
) -> tuple[dict, dict]:
    """``record`` with the face track of its segments (``face_frames``, ``face_index``; the segments without a
    face of their own removed under ``faces["fill"] == "segment"``, their audio too) and the track's counts.

    ``FewFacesError`` when the face is found in fewer than ``min_detection_rate`` of the frames or is missing
    longer than ``max_gap_s``, unless ``few_faces`` is ``keep`` (then the meta's ``few_faces`` says why).
    """
    track = segment_faces(decoded, record["segment_times"], faces, detector, path)
    few = few_faces_reason(track, faces["min_detection_rate"], faces["max_gap_s"])
    if few and faces["few_faces"] == "drop":
        raise FewFacesError(path, f"{few}; faces.few_faces=keep keeps such clips")
    kept = torch.as_tensor(track.segments)
    record = {
        **{key: value[kept] for key, value in record.items()},
        "face_frames": track.face_frames,
        "face_index": track.face_index,
    }
    return record, {
        "n_frames": int(track.face_frames.shape[0]),
        "decoded_frames": track.decoded_frames,
        "face_detected_frames": track.detected_frames,
        "face_searched_frames": track.searched_frames,
        "face_filled_frames": track.filled_frames,
        "face_fallback_frames": track.fallback_frames,
        "segments_without_face": track.segments_without_face,
        "face_longest_gap_s": round(track.longest_gap_s, 4),
        "few_faces": few,
    }


def face_detector(cfg: dict, device: str = "cpu") -> FaceDetector | WholeFrameFaces | None:
    """The face detector of the preprocessing config ``cfg`` (``WholeFrameFaces`` for frames that are face crops
    already, ``faces.detect: false``), or None when it has no video."""
    if not cfg["video"]:
        return None
    faces = cfg["faces"]
    if not faces.get("detect", True):
        return WholeFrameFaces()
    return FaceDetector(
        device=device,
        min_confidence=faces["min_confidence"],
        detect_max_side=faces["detect_max_side"],
        min_face_size=faces["min_face_size"],
    )


def preprocess_clip(clip: Clip, cfg: dict, detector: FaceDetector | WholeFrameFaces | None) -> dict:
    """Decode, trim by VAD, cut MFCC images and the matching face segments of one clip; a clip without audio
    (``cfg["audio"]`` false: image sequences) is cut into segments of the same length by time alone.

    Raises ``ClipFailure`` naming the step that failed and its exception (``BadInputError`` with the reason
    when the input cannot be used).
    """
    with step("decode"):
        decoded = decode(clip, cfg)
    if cfg["audio"]:
        speech = speech_segments(decoded, cfg, clip.path)
        record: dict[str, Any] = {"audio": speech.images, "segment_times": speech.times}
        vad = {"vad_found": bool(speech.vad_found), "vad_span_s": [round(float(t), 4) for t in speech.span_s]}
    else:
        record, vad = {"segment_times": silent_segments(decoded, cfg)}, {}
    meta = {
        "clip_id": clip.clip_id,
        "subject": clip.subject,
        "label": clip.label,
        "duration_s": round(decoded.duration_s, 4),
        "vad_found": None,
        "vad_span_s": None,
        **vad,
        "n_segments": int(record["segment_times"].shape[0]),
        "n_frames": 0,
        "decoded_frames": 0,
        "face_detected_frames": 0,
        "face_searched_frames": 0,
        "face_filled_frames": 0,
        "face_fallback_frames": 0,
        "segments_without_face": 0,
        "face_longest_gap_s": 0.0,
        "few_faces": None,
    }
    if cfg["video"]:
        with step("decode"):
            decoded = segment_frames(decoded, clip.path, record["segment_times"])
        with step("faces"):
            record, face_meta = face_segments(decoded, record, cfg["faces"], detector, clip.path)
        meta.update(face_meta, n_segments=int(record["segment_times"].shape[0]))
    record["meta"] = meta
    return record


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


def file_signature(path: Path) -> list[int] | None:
    """Size, modification and status-change times of ``path`` (links followed); None when it has none.

    A cached verdict holds for the file it was given on: replacing, editing or chmod-ing it changes this.
    """
    try:
        status = os.stat(path)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns]


def verdict_path(clip_file: Path) -> Path:
    """Where the verdict on a clip that could not be prepared is kept, beside where its cache file would be."""
    return clip_file.with_suffix(".dropped.json")


def cached_verdict(clip: Clip, clip_file: Path) -> dict | None:
    """The stored failure of ``clip`` when the file is the one it was found on, else None."""
    path = verdict_path(clip_file)
    if not path.is_file():
        return None
    verdict = json.loads(path.read_text())
    signature = verdict.pop("signature")
    return verdict if signature is not None and signature == file_signature(clip.path) else None


def claim_path(clip_file: Path) -> Path:
    """The lock file of a clip, beside where its cache file goes, while some run prepares it."""
    return clip_file.with_name(f".{clip_file.name}.lock")


@contextmanager
def claim_clip(clip_file: Path, wait: bool) -> Iterator[bool]:
    """Hold the clip's lock (``flock`` on ``claim_path``) for the block; yields False instead of waiting
    when another process holds it and ``wait`` is False.

    Whoever holds the lock prepares the clip and owns its temporary files. The kernel (over NFS, the lock
    manager) releases the lock of a process that dies, so no claim outlives its run. The holder removes
    the lock file before releasing it, so a waiter that then gets the lock of the removed file tries again.
    """
    path = claim_path(clip_file)
    handle = _lock_current(path, wait)
    if handle is None:
        yield False
        return
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def _lock_current(path: Path, wait: bool) -> IO | None:
    """An open handle that holds the lock of the file now at ``path`` (created if missing); None when
    another process holds it and ``wait`` is False."""
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        if _is_current(handle, path):
            return handle
        handle.close()


def _is_current(handle: IO, path: Path) -> bool:
    """Whether the open ``handle`` is still the file at ``path`` (not removed or replaced since it was opened)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (opened.st_dev, opened.st_ino) == (status.st_dev, status.st_ino)


def remove_stale_temporaries(folder: Path, clip_files: Iterable[Path]) -> None:
    """Delete the temporary files a killed run left for ``clip_files`` (cache files and verdicts): those of
    clips whose lock is free, since a live writer holds its clip's lock. A run's other temporary files
    (report.json, preprocess.json) are left: another run may be writing them."""
    owners = {name: clip_file for clip_file in clip_files for name in (clip_file.name, verdict_path(clip_file).name)}
    for tmp in folder.glob(".*.tmp"):
        clip_file = owners.get(tmp.name[1:].rsplit(".", 2)[0])
        if clip_file is None:
            continue
        with claim_clip(clip_file, wait=False) as held:
            if held:
                tmp.unlink(missing_ok=True)


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


class ChunkLines:
    """tqdm's ``update`` and ``close`` for a log file (stdout not a terminal): one line per tenth of the clips."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.chunk = max(1, math.ceil(total / 10))
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.done % self.chunk == 0 or self.done == self.total:
            print(f"{self.desc}: {self.done}/{self.total} clips, {time.perf_counter() - self.start:.0f} s", flush=True)

    def close(self) -> None:
        """Nothing to close: every line is written whole."""


def clip_progress(total: int, desc: str, enabled: bool) -> tqdm | ChunkLines:
    """A tqdm bar on a terminal, ``ChunkLines`` when stdout is a file (a cluster job's log)."""
    if enabled and total and not sys.stdout.isatty():
        return ChunkLines(total, desc)
    return tqdm(total=total, desc=desc, unit="clip", disable=not enabled or not total)


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
    if workers <= 1 or len(todo) <= 1:
        results = _results_in_this_process(todo, cfg, files, wait)
    else:
        results = _results_in_workers(todo, cfg, files, workers, wait)
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


def _results_in_this_process(todo: list[Clip], cfg: dict, files: dict[str, Path], wait: bool) -> Iterator[ClipOutcome]:
    """``_prepare_one``'s outcome for each clip of ``todo``, one after the other, with this process's threads
    (one for a corpus without video: ``threads_per_worker``)."""
    with computing_with(None if cfg["video"] else threads_per_worker(1, video=False)):
        _init_worker(cfg, None)
        yield from _outcomes(todo, cfg, [files[clip.clip_id] for clip in todo], wait)


def _outcomes(clips: list[Clip], cfg: dict, files: list[Path], wait: bool) -> Iterator[ClipOutcome]:
    """``_prepare_one``'s outcome for each of ``clips`` (written to the matching ``files``), as each finishes."""
    for clip, file in zip(clips, files):
        yield _task_result(lambda: _prepare_one(clip, cfg, file, wait), clip)


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


def failure_summary(report: dict, max_failed_fraction: float, most: int = 5) -> str:
    """Why a run stopped: how many clips failed and the ``most`` most common reasons."""
    reasons = "\n".join(f"  {count} x {reason}" for reason, count in list(report["dropped_by_reason"].items())[:most])
    return (
        f"preprocessing of {report['corpus']} stopped: {len(report['dropped'])} of {report['clips_indexed']} clips "
        f"failed, more than max_failed_fraction={max_failed_fraction:g} of them. A fault this common is more "
        f"likely a bug or a wrong setting than a bad corpus. Most common reasons:\n{reasons}\n"
        f"report so far: {report['cache']}/report.json"
    )


def failure_line(clip_id: str, failure: dict) -> str:
    """One line on a dropped clip: its id, the step, the exception's type, the reason and the file."""
    return f"{clip_id}: {failure['step']}: {failure['error']}: {failure['reason']} ({failure['path']})"


def reason_kind(failure: dict) -> str:
    """A failure without its particulars (what follows a ";" or a " (", numbers, quoted names), so that
    failures of one kind count together."""
    generic = re.split(r";| \(", failure["reason"], maxsplit=1)[0]
    generic = re.sub(r"\d+(\.\d+)?", "N", re.sub(r"'[^']*'", "'…'", generic))
    return f"{failure['step']}: {failure['error']}: {generic}"


def build_report(
    kept: list[Clip],
    metas: dict[str, dict],
    dropped: dict[str, dict],
    indexed: IndexResult,
    *,
    corpus: str,
    key: str,
    folder: Path,
    processed_now: list[str],
    work_s: float,
    total_s: float,
) -> dict:
    """Counts a researcher checks before training: every file under the root (found, excluded by selection,
    skipped by the indexer, dropped, prepared), per class and subject, segments, faces, and the reasons."""
    kept_metas = [metas[c.clip_id] for c in kept]
    used_frames = sum(m["n_frames"] for m in kept_metas)
    new_media_s = sum(metas[c]["duration_s"] for c in processed_now)
    not_reached = len(indexed.clips) - len(kept) - len(dropped)
    return {
        "corpus": corpus,
        "cache": str(folder),
        "key": key,
        "files": {
            "found": indexed.files_found,
            "prepared": len(kept),
            "dropped": len(dropped),
            "excluded": len(indexed.excluded),
            "skipped": len(indexed.skipped),
            "other_files": indexed.other_files,
            **({"further_frames": indexed.further_frames} if indexed.further_frames else {}),
            **({"not_reached": not_reached} if not_reached else {}),
        },
        "clips_indexed": len(indexed.clips),
        "clips_prepared": len(kept),
        "clips_per_class": dict(sorted(Counter(c.label for c in kept).items())),
        "clips_per_subject": dict(sorted(Counter(c.subject for c in kept).items())),
        "segments": sum(m["n_segments"] for m in kept_metas),
        "segments_per_class": _segments_per_class(kept, metas),
        "vad_not_found": sorted(c.clip_id for c in kept if metas[c.clip_id]["vad_found"] is False),
        "face_frames": used_frames,
        **face_counts(kept, metas, dropped),
        "dropped": dict(sorted(dropped.items())),
        "dropped_by_reason": dict(Counter(reason_kind(failure) for failure in dropped.values()).most_common()),
        "excluded": [list(item) for item in indexed.excluded],
        "excluded_by_rule": dict(Counter(rule for _, rule in indexed.excluded).most_common()),
        "skipped": [list(item) for item in indexed.skipped],
        "notes": list(indexed.notes),
        "clips_processed_now": len(processed_now),
        "seconds": round(total_s, 2),
        "clips_per_second": round(len(processed_now) / work_s, 3) if processed_now else None,
        "media_seconds_per_second": round(new_media_s / work_s, 3) if processed_now else None,
    }


def face_counts(kept: list[Clip], metas: dict[str, dict], dropped: dict[str, dict]) -> dict:
    """The report's faces: frames decoded and with a face (the detection rate, over the corpus and per clip),
    frames filled from another frame, segments without a face of their own, centre-crop fallbacks, and the
    clips with too few faces, dropped (by reason) and kept (``few_faces: keep``)."""
    kept_metas = [metas[c.clip_id] for c in kept]
    decoded = sum(m["decoded_frames"] for m in kept_metas)
    detected = sum(m["face_detected_frames"] for m in kept_metas)
    return {
        "decoded_frames": decoded,
        "face_detected_frames": detected,
        "face_detection_rate": detected / decoded if decoded else None,
        "face_detection_rate_per_clip": {
            m["clip_id"]: round(m["face_detected_frames"] / m["decoded_frames"], 4)
            for m in kept_metas
            if m["decoded_frames"]
        },
        "face_filled_frames": sum(m["face_filled_frames"] for m in kept_metas),
        "segments_without_face": sum(m["segments_without_face"] for m in kept_metas),
        "face_fallback_frames": sum(m["face_fallback_frames"] for m in kept_metas),
        "few_faces": {
            "dropped": sum(failure["error"] == FewFacesError.__name__ for failure in dropped.values()),
            "kept": {m["clip_id"]: m["few_faces"] for m in kept_metas if m["few_faces"]},
        },
    }


def _segments_per_class(kept: list[Clip], metas: dict[str, dict]) -> dict[str, int]:
    counts: Counter = Counter()
    for clip in kept:
        counts[clip.label] += metas[clip.clip_id]["n_segments"]
    return dict(sorted(counts.items()))


def format_report(report: dict, listed: int = 20) -> str:
    """The report as a short human-readable table; at most ``listed`` skipped files and notes are named."""
    files = report["files"]
    lines = [
        f"corpus {report['corpus']}  cache {report['cache']}",
        f"files under the root: {files['found']} = {files['prepared']} prepared + {files['dropped']} dropped + "
        f"{files['excluded']} excluded by selection + {files['skipped']} skipped by the indexer + "
        f"{files['other_files']} other files (no recordings by name)"
        + (f" + {files['further_frames']} further frames of image sequences" if "further_frames" in files else "")
        + (f" + {files['not_reached']} not reached" if "not_reached" in files else ""),
        f"clips: {report['clips_prepared']} prepared of {report['clips_indexed']} indexed, "
        f"{report['clips_processed_now']} processed now in {report['seconds']} s"
        + (
            f" ({report['clips_per_second']} clips/s, {report['media_seconds_per_second']} s of media/s)"
            if report["clips_per_second"]
            else ""
        ),
        f"segments: {report['segments']}",
        "per class: "
        + ", ".join(
            f"{k} {v} clips/{report['segments_per_class'][k]} seg" for k, v in report["clips_per_class"].items()
        ),
        "per subject: " + ", ".join(f"{k} {v}" for k, v in report["clips_per_subject"].items()),
    ]
    if report["face_frames"]:
        few = report["few_faces"]
        lines.append(
            f"faces: {report['decoded_frames']} frames decoded, a face in {report['face_detected_frames']} (detection "
            f"rate {report['face_detection_rate']:.3f}, lowest clip "
            f"{min(report['face_detection_rate_per_clip'].values()):.3f}); {report['face_frames']} crops kept, "
            f"{report['face_filled_frames']} frames filled from another frame, {report['segments_without_face']} "
            f"segments without a face of their own, {report['face_fallback_frames']} centre-crop fallbacks; too few "
            f"faces: {few['dropped']} clips dropped, {len(few['kept'])} kept"
        )
    if report["vad_not_found"]:
        lines.append(f"VAD found no speech (whole clip kept): {len(report['vad_not_found'])}")
    lines.append(f"excluded by selection: {files['excluded']}")
    lines += [f"  {rule}: {count}" for rule, count in report["excluded_by_rule"].items()]
    lines.append(f"skipped by the indexer: {files['skipped']}")
    lines += [f"  {path}: {reason}" for path, reason in report["skipped"][:listed]]
    lines.append(f"dropped: {files['dropped']}")
    lines += [f"  {failure_line(clip_id, failure)}" for clip_id, failure in report["dropped"].items()]
    if report["notes"]:
        lines.append(f"notes: {len(report['notes'])}")
        lines += [f"  {note}" for note in report["notes"][:listed]]
    return "\n".join(lines)


def sample_across(clips: list[Clip], n: int) -> list[Clip]:
    """Up to ``n`` of ``clips`` spread over classes and subjects: the classes take turns, and each picks
    its clip of the subject picked least so far (ties: the first in ``clips``)."""
    by_label: dict[str, list[Clip]] = {}
    for clip in clips:
        by_label.setdefault(clip.label, []).append(clip)
    picked: list[Clip] = []
    picks_per_subject: Counter = Counter()
    while len(picked) < min(n, len(clips)):
        for candidates in by_label.values():
            if candidates and len(picked) < n:
                choice = min(candidates, key=lambda clip: picks_per_subject[clip.subject])
                candidates.remove(choice)
                picked.append(choice)
                picks_per_subject[choice.subject] += 1
    return picked


def plot_vad_spans(clips: list[Clip], cfg: dict, out_dir: Path) -> list[Path]:
    """A VAD plot (waveform, speech-band ratio, energy, kept span) per clip, to check the VAD by eye."""
    paths = []
    vad_cfg = {k: v for k, v in cfg["vad"].items() if k != "enabled"}
    for clip in clips:
        audio = decode_clip(clip.path, sample_rate=cfg["sample_rate"], with_video=False).audio
        result = detect_speech_span(audio, cfg["sample_rate"], **vad_cfg)
        paths.append(plot_vad(audio, cfg["sample_rate"], result, Path(out_dir) / f"{clip.clip_id}.png"))
    return paths
