"""Decode a recording with PyAV into mono audio at a fixed rate and RGB video frames, or an image sequence
(CK+) into RGB frames.

Audio and video share one time origin: the presentation time of the first audio sample.
``audio[n]`` lies at ``n / sample_rate`` seconds and ``frame_times`` are on the same axis, so a
span found on the audio (VAD, MFCC segments) selects the matching video frames directly. An image
sequence has no audio; its frames lie at ``i / frame_rate`` seconds.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

# A stream whose decoded audio falls this much short of its declared duration was cut off.
_TRUNCATION_TOLERANCE_S = 0.5
_TRUNCATION_TOLERANCE_FRACTION = 0.1


class BadInputError(ValueError):
    """A recording that cannot be used: missing, undecodable, truncated, silent of audio, ..."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class DecodedClip:
    """One decoded recording; all times in seconds from the first audio sample."""

    audio: np.ndarray  # float32 [N], mono, in [-1, 1]; [0] for a video without audio (audio_required=False)
    sample_rate: int
    frames: np.ndarray | None  # uint8 [T,H,W,3] RGB; None for audio-only input or with_video=False
    frame_times: np.ndarray | None  # float64 [T] presentation times
    fps: float | None  # the video stream's average frame rate
    duration_s: float  # len(audio) / sample_rate; without audio (image sequences too), to the end of the last frame


def _declared_duration_s(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def check_readable(path: Path) -> None:
    """``BadInputError`` for a path that is no file, an empty file or one this user may not read."""
    if not path.is_file():
        raise BadInputError(path, "file not found")
    if path.stat().st_size == 0:
        raise BadInputError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise BadInputError(path, "permission denied: the file is not readable by this user")


def describe_start(path: Path, n_bytes: int = 24) -> str:
    """What the file begins with: its text when the first bytes are printable, else their hex."""
    with path.open("rb") as handle:
        head = handle.read(n_bytes)
    if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        return f"text {head.decode('ascii')!r}"
    return f"bytes {head.hex(' ')}"


def decode_clip(
    path: str | Path, sample_rate: int = 16000, with_video: bool = True, audio_required: bool = True
) -> DecodedClip:
    """Decode ``path``: audio resampled to mono float32 at ``sample_rate``; video as RGB24 frames.

    Raises ``BadInputError`` for a missing, empty or unreadable file, a file that is not media (FFmpeg
    cannot read it, or its reader finds no stream header), a truncated or corrupt stream, no audio
    stream, or audio of zero length. Audio-only containers (flac, wav) give ``frames=None`` even when
    ``with_video`` is true; whether that is an error is the caller's call. ``audio_required=False`` (with
    ``with_video``) takes a video without an audio track too: its ``audio`` is empty, its times start at
    its first frame and its duration runs to the end of its last frame.
    """
    path = Path(path)
    check_readable(path)
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise BadInputError(path, f"not a media file: FFmpeg cannot read it ({error})") from error
    with container:
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        if audio_stream is None and (audio_required or not (with_video and container.streams.video)):
            raise BadInputError(path, "no audio stream" + (": a video-only file" if container.streams.video else ""))
        if audio_stream is not None and not audio_stream.codec_context.sample_rate and not container.streams.video:
            # FFmpeg picked its reader by the file name and found no header to read: text, random bytes.
            raise BadInputError(
                path, f"not a media file: no {container.format.name} header; it begins with {describe_start(path)}"
            )
        video_stream = container.streams.video[0] if with_video and container.streams.video else None
        streams = [stream for stream in (audio_stream, video_stream) if stream is not None]
        if video_stream is not None:
            video_stream.thread_type = "AUTO"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        audio_chunks: list[np.ndarray] = []
        audio_start_s: float | None = None
        frames: list[np.ndarray] = []
        frame_pts_s: list[float] = []
        try:
            for packet in container.demux(streams):
                for frame in packet.decode():
                    if packet.stream.type == "audio":
                        if audio_start_s is None:
                            audio_start_s = frame.time or 0.0
                        audio_chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))
                    else:
                        frames.append(frame.to_ndarray(format="rgb24"))
                        frame_pts_s.append(frame.time if frame.time is not None else np.nan)
            if audio_stream is not None:
                audio_chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(None))
        except av.FFmpegError as error:
            raise BadInputError(path, f"corrupt or truncated stream ({error})") from error

        audio = np.concatenate(audio_chunks).astype(np.float32) if audio_chunks else np.zeros(0, np.float32)
        duration_s = audio.size / sample_rate
        if audio_stream is not None:
            _check_audio_length(path, duration_s, _declared_duration_s(audio_stream))

        if video_stream is None:
            return DecodedClip(audio, sample_rate, None, None, None, duration_s)
        if not frames:
            raise BadInputError(path, "video stream has no decodable frames")
        frame_times = np.asarray(frame_pts_s, dtype=np.float64)
        if np.isnan(frame_times).any():  # frames without timestamps: nominal rate from the audio's start
            frame_times = _times_from_rate(path, len(frames), video_stream)
        else:
            frame_times -= audio_start_s if audio_stream is not None else frame_times.min()
        video = np.stack(frames)
        if np.any(np.diff(frame_times) < 0):
            order = np.argsort(frame_times, kind="stable")
            video, frame_times = video[order], frame_times[order]
        fps = float(video_stream.average_rate) if video_stream.average_rate else None
        if audio_stream is None:
            duration_s = float(frame_times[-1]) + (1.0 / fps if fps else 0.0)
        return DecodedClip(audio, sample_rate, video, frame_times, fps, duration_s)


def _check_audio_length(path: Path, duration_s: float, declared_s: float | None) -> None:
    """``BadInputError`` for audio of zero length, or much shorter than its stream declares (cut off)."""
    if duration_s == 0:
        raise BadInputError(path, "audio stream has zero length")
    if declared_s is not None and declared_s - duration_s > max(
        _TRUNCATION_TOLERANCE_S, _TRUNCATION_TOLERANCE_FRACTION * declared_s
    ):
        raise BadInputError(
            path, f"truncated: decoded {duration_s:.2f} s of audio, the stream declares {declared_s:.2f} s"
        )


def _times_from_rate(path: Path, n_frames: int, video_stream: av.video.stream.VideoStream) -> np.ndarray:
    """Frame times from the nominal rate, for containers whose frames carry no timestamps."""
    rate = video_stream.average_rate or video_stream.guessed_rate
    if not rate:
        raise BadInputError(path, "video frames carry neither timestamps nor a frame rate")
    return np.arange(n_frames, dtype=np.float64) / float(rate)


def decode_frames(paths: Sequence[str | Path], frame_rate: float) -> DecodedClip:
    """An image sequence (png, jpeg, ...; grey or colour) as RGB frames at ``i / frame_rate`` seconds, with no audio.

    Raises ``BadInputError`` naming the file for a missing, empty, unreadable or undecodable image, and for
    frames of different sizes.
    """
    frames = []
    for path in map(Path, paths):
        check_readable(path)
        try:
            image = decode_image(torch.from_numpy(np.fromfile(path, dtype=np.uint8)), mode=ImageReadMode.RGB)
        except RuntimeError as error:
            raise BadInputError(path, f"not an image: {error} (it begins with {describe_start(path)})") from error
        if frames and image.shape != frames[0].shape:
            sizes = f"{tuple(image.shape[1:])} pixels in a sequence of {tuple(frames[0].shape[1:])}"
            raise BadInputError(path, f"frame of {sizes}")
        frames.append(image)
    if not frames:
        raise ValueError("an image sequence needs at least one frame")
    video = torch.stack(frames).permute(0, 2, 3, 1).contiguous().numpy()
    times = np.arange(len(frames), dtype=np.float64) / frame_rate
    return DecodedClip(np.zeros(0, np.float32), 0, video, times, float(frame_rate), len(frames) / frame_rate)
