"""The steps that turn one clip into its cache record (paper §3.1-3.3): decode, duration, vad, mfcc, faces.

Each step runs under ``step``: an exception in it becomes a ``ClipFailure`` naming the step, so that the clip
is dropped with the step and the reason and the other clips go on. ``preprocess_clip`` chains the steps for a
corpus clip; ``datamodules.recordings`` reuses them for new recordings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.clips import Clip
from datamodules.decode import BadInputError, DecodedClip, cut_clip, decode_audio, decode_frames, decode_video
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
from datamodules.mfcc import SHORT_CHOICES, mfcc_images, segment_length_s, segment_times_for_duration
from datamodules.vad import trim_to_speech

PIPELINE_VERSION = 1  # bump when the code changes what a cache file holds
NO_SPEECH_CHOICES: tuple[str, ...] = ("drop", "keep")


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


@contextmanager
def step(name: str) -> Iterator[None]:
    """Run one step of a clip's preprocessing: any exception in it becomes a ``ClipFailure`` naming the step."""
    try:
        yield
    except Exception as error:
        raise ClipFailure(name, error) from error


def check_duration(audio: np.ndarray, sample_rate: int, mfcc_cfg: dict, path: Path) -> None:
    """``BadInputError`` when the clip is shorter than one MFCC segment (0.655 s with the paper's values), unless
    ``mfcc_cfg["short"]`` pads such a clip to one segment (``repeat`` or ``zeros``; ``drop`` when unset)."""
    if mfcc_cfg.get("short", "drop") != "drop":
        return
    timing = {k: mfcc_cfg[k] for k in ("window_ms", "hop_ms") if k in mfcc_cfg}
    minimum_s = segment_length_s(mfcc_cfg["window"], **timing)
    duration_s = audio.size / sample_rate
    if duration_s < minimum_s:
        raise BadInputError(
            path,
            f"too short: {duration_s:.3f} s of audio, one segment of {mfcc_cfg['window']} MFCC frames "
            f"needs {minimum_s:.3f} s; data.preprocess.mfcc.short=repeat pads it to one",
        )


def check_failure_settings(cfg: dict) -> None:
    """A ``ValueError`` for a ``no_speech``, ``max_failed_fraction`` or face rule value that means nothing, before
    any clip is tried (a typo must not turn into a dropped corpus)."""
    if cfg.get("audio", True) and cfg["mfcc"].get("short", "drop") not in SHORT_CHOICES:
        raise ValueError(f"mfcc.short must be one of {SHORT_CHOICES}, got {cfg['mfcc']['short']!r}")
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
    those its speech segments show. A clip cut out of a longer recording (``Clip.cut``, from a table's
    ``start_s`` / ``end_s``) is that span alone, its times from the span's start."""
    if "frames" in clip.extra:
        decoded = decode_frames(clip.extra["frames"], cfg["sequence_fps"])
        return decoded if clip.cut is None else cut_clip(decoded, clip.path, *clip.cut)
    decoded = decode_audio(clip.path, sample_rate=cfg["sample_rate"], with_video=cfg["video"])
    if clip.cut is not None:
        decoded = cut_clip(decoded, clip.path, *clip.cut)
    if cfg["video"] and not decoded.has_video:
        raise BadInputError(clip.path, "audio only: no video stream, and this corpus is audio-visual (video: true)")
    if cfg["video"] and frames_decoded(cfg["faces"]) == "all":
        span = None if clip.cut is None else (0.0, decoded.duration_s)
        return decode_video(decoded, clip.path, span)
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
