"""New recordings for ``predict.py``: the files an input names, each prepared by the training pipeline's
steps (decode, VAD, MFCC, faces: ``datamodules/preprocess.py``) under the same per-clip guard, the next file
while the current one goes through the networks (``prefetched``).

Unlike a corpus clip, a recording may lack what one model needs and still be used by another: a video
without an audio track is cut into segments over its whole length for the visual model, and a recording in
which no face is found keeps its audio segments for the audio model (``prepare_recording``).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from datamodules.corpora import Problem, natural_key, scan_media
from datamodules.decode import BadInputError, decode_clip
from datamodules.faces import FaceDetector, FaceTrack, NoFaceError
from datamodules.mfcc import audio_statistics
from datamodules.preprocess import ClipFailure, segment_faces, silent_segments, speech_segments, step

MEDIA_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".flv", ".webm", ".mov", ".wav", ".flac", ".mp3", ".m4a")
LIST_EXTENSIONS: tuple[str, ...] = (".txt",)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class ModelInputs:
    """What the networks of one prediction stage take from a recording."""

    audio_required: bool  # the audio network alone (stage=audio): a file without audio is refused
    faces: bool  # some network reads face crops: decode the video and detect faces
    faces_required: bool  # the visual network alone (stage=visual): a file without a face is refused


@dataclass
class Recording:
    """One prepared input file: its segments with the MFCC images and face crops the networks read."""

    path: Path
    duration_s: float
    sample_rate: int
    waveform: np.ndarray  # float32 [N] mono at sample_rate; [0] for a video without audio
    segment_times: torch.Tensor  # float32 [K, 2] start and end seconds in the file
    audio: torch.Tensor | None  # uint8 [K, 3, n_mfcc, window] MFCC images; None without audio
    speech_span_s: tuple[float, float] | None  # the span the VAD kept; None without audio
    faces: FaceTrack | None  # None without video, when no network reads faces, or when no face was found
    face_times: np.ndarray | None  # float [F] seconds of the frame each of faces.face_frames was cut from
    face_detection_rate: float | None  # share of the decoded frames that show a face; None: not looked

    def segment_has_face(self) -> np.ndarray:
        """bool ``[K]``: a face was detected in one of the segment's own frames at least."""
        if self.faces is None:
            return np.zeros(len(self.segment_times), dtype=bool)
        return self.faces.segment_has_face

    @cached_property
    def audio_stats(self) -> torch.Tensor:
        """``audio_statistics`` of this recording's segments, ``[2, 3, rows]`` (computed once)."""
        return audio_statistics([self.audio])

    def batch(self, rows: torch.Tensor, inputs: Sequence[str]) -> dict[str, torch.Tensor]:
        """The network inputs of segments ``rows``: ``audio`` uint8 ``[B, 3, 64, 64]`` with ``audio_stats``
        (this recording's ``audio_statistics``: what an ``input_norm`` utterance model reads, and what stands in
        for the speaker's for a speaker-normalised one) and/or ``faces`` uint8 ``[B, 20, 3, S, S]``, as in
        training batches."""
        batch = {}
        if "audio" in inputs:
            batch["audio"] = self.audio[rows]
            batch["audio_stats"] = self.audio_stats.expand(len(rows), -1, -1, -1)
        if "faces" in inputs:
            batch["faces"] = self.faces.face_frames[self.faces.face_index[rows]]
        return batch


def input_files(path: Path) -> tuple[list[Path], list[Problem]]:
    """The files an input names, and what under it could not be used (path, reason): a folder's media files
    (``MEDIA_EXTENSIONS``, recursively, links followed; broken links and folders that cannot be listed are
    the problems), the paths listed in a ``.txt`` file (one a line, relative to the list's folder; blank
    lines and ``#`` comments skipped), or the file itself."""
    if path.is_dir():
        scan = scan_media(path, MEDIA_EXTENSIONS)
        return sorted(scan.files, key=lambda file: natural_key(str(file))), scan.unusable
    if path.suffix.lower() in LIST_EXTENSIONS:
        lines = (line.strip() for line in path.read_text().splitlines())
        return [path.parent / Path(line).expanduser() for line in lines if line and not line.startswith("#")], []
    return [path], []


def display_names(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the folder all of them are in: short, and unique where the paths are."""
    absolute = [path.absolute() for path in paths]
    common = os.path.commonpath([path.parent for path in absolute])
    return [str(path.relative_to(common)) for path in absolute]


def prepare_recording(path: Path, cfg: dict, inputs: ModelInputs, detector: FaceDetector | None) -> Recording:
    """Decode ``path`` and cut it into segments as training did (``cfg``: the run's ``data.preprocess``).

    With audio, the segments are the MFCC segments of the span the VAD keeps; without (allowed unless
    ``inputs.audio_required``), segments of the same layout over the whole video. Face tracks follow the
    run's face settings; where no face is found at all the recording keeps no faces when an audio network
    can take over, else it fails like a training clip (``NoFaceError``). Raises ``ClipFailure`` naming the
    step that failed.
    """
    with step("decode"):
        decoded = decode_clip(
            path, sample_rate=cfg["sample_rate"], with_video=inputs.faces, audio_required=inputs.audio_required
        )
        if inputs.faces_required and decoded.frames is None:
            raise BadInputError(path, "audio only: no video stream, and the visual model reads faces")
    has_audio = decoded.audio.size > 0
    speech = speech_segments(decoded, cfg, path) if has_audio else None
    times = speech.times if speech is not None else silent_segments(decoded, cfg)
    track, face_rate = None, None
    if decoded.frames is not None:
        try:
            with step("faces"):
                track = segment_faces(decoded, times, cfg["faces"], detector, path, fill="nearest")
            face_rate = track.detection_rate
        except ClipFailure as failure:
            if not (isinstance(failure.error, NoFaceError) and has_audio and not inputs.faces_required):
                raise
            face_rate = 0.0
    return Recording(
        path=path,
        duration_s=decoded.duration_s,
        sample_rate=decoded.sample_rate,
        waveform=decoded.audio,
        segment_times=times,
        audio=speech.images if speech is not None else None,
        speech_span_s=speech.span_s if speech is not None else None,
        faces=track,
        face_times=None if track is None else decoded.frame_times[track.source_frames],
        face_detection_rate=face_rate,
    )


def prefetched(
    items: Sequence[Item], prepare: Callable[[Item], Result], ahead: int
) -> Iterator[tuple[Item, Future[Result]]]:
    """Each item with the future of ``prepare(item)``, in order, ``prepare`` running in one background thread
    up to ``ahead`` items in front of the consumer: decoding and face detection of the next files overlap
    with what the consumer does with this one (PyAV and torch release the GIL). ``ahead=0``: one after the
    other."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque[tuple[Item, Future[Result]]] = deque()
        for item in items:
            pending.append((item, pool.submit(prepare, item)))
            if len(pending) > ahead:
                yield pending.popleft()
        while pending:
            yield pending.popleft()
