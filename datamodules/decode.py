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
from dataclasses import dataclass, replace
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
    has_video: bool = False  # the file has a video stream (its frames may not be decoded yet: ``decode_video``)
    time_origin_s: float | None = None  # the stream time of t = 0 (the first audio sample); None without audio


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


_decoder_threads = 0  # FFmpeg's video decoding threads in this process; 0: FFmpeg's choice (one per core)


def set_decoder_threads(threads: int) -> None:
    """How many threads FFmpeg decodes video with in this process (0: one per core), as ``torch.set_num_threads``
    does for torch: a preprocessing worker sets its share of the cores."""
    global _decoder_threads
    if threads < 0:
        raise ValueError(f"decoder threads must be >= 0, got {threads}")
    _decoder_threads = threads


def decoder_threads() -> int:
    """The video decoding threads of this process (``set_decoder_threads``)."""
    return _decoder_threads


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
    decoded = decode_audio(path, sample_rate, with_video, audio_required)
    return decode_video(decoded, path) if with_video and decoded.has_video else decoded


def decode_audio(
    path: str | Path, sample_rate: int = 16000, with_video: bool = True, audio_required: bool = True
) -> DecodedClip:
    """The audio of ``path`` (``decode_clip`` without the frames; ``has_video`` tells whether a video stream is
    there for ``decode_video``). ``with_video`` and ``audio_required`` decide, as in ``decode_clip``, whether a
    file without an audio track is an error."""
    path = Path(path)
    check_readable(path)
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise BadInputError(path, f"not a media file: FFmpeg cannot read it ({error})") from error
    with container:
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        has_video = bool(container.streams.video)
        if audio_stream is None and (audio_required or not (with_video and has_video)):
            raise BadInputError(path, "no audio stream" + (": a video-only file" if has_video else ""))
        if audio_stream is not None and not audio_stream.codec_context.sample_rate and not has_video:
            # FFmpeg picked its reader by the file name and found no header to read: text, random bytes.
            raise BadInputError(
                path, f"not a media file: no {container.format.name} header; it begins with {describe_start(path)}"
            )
        if audio_stream is None:
            return DecodedClip(np.zeros(0, np.float32), sample_rate, None, None, None, 0.0, has_video=True)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        audio_chunks: list[np.ndarray] = []
        audio_start_s: float | None = None
        try:
            for frame in container.decode(audio_stream):
                if audio_start_s is None:
                    audio_start_s = frame.time or 0.0
                audio_chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))
            audio_chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(None))
        except av.FFmpegError as error:
            raise BadInputError(path, f"corrupt or truncated stream ({error})") from error
        audio = np.concatenate(audio_chunks).astype(np.float32) if audio_chunks else np.zeros(0, np.float32)
        duration_s = audio.size / sample_rate
        _check_audio_length(path, duration_s, _declared_duration_s(audio_stream))
        return DecodedClip(
            audio, sample_rate, None, None, None, duration_s, has_video=has_video, time_origin_s=audio_start_s or 0.0
        )


def decode_video(decoded: DecodedClip, path: str | Path, span_s: tuple[float, float] | None = None) -> DecodedClip:
    """``decoded`` (from ``decode_audio``) with the RGB24 frames of ``path`` shown in ``span_s`` (start <= t < end,
    seconds on the audio's time axis), or all of them; FFmpeg decodes with ``decoder_threads()`` threads.

    Frames before the span are decoded but not converted, and decoding stops at the span's end. A span that
    no frame falls in gets every frame. Raises ``BadInputError`` for a corrupt stream or one without frames.
    """
    path = Path(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = _decoder_threads
        rate = stream.average_rate or stream.guessed_rate
        frames: list[np.ndarray] = []
        times: list[float] = []
        try:
            for index, frame in enumerate(container.decode(stream)):
                time_s = _frame_time(path, frame, index, rate, decoded.time_origin_s)
                if span_s is not None and time_s >= span_s[1]:
                    break
                if span_s is None or time_s >= span_s[0]:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    times.append(time_s)
        except av.FFmpegError as error:
            raise BadInputError(path, f"corrupt or truncated stream ({error})") from error
        fps = float(stream.average_rate) if stream.average_rate else None
    if not frames:
        if span_s is not None:
            return decode_video(decoded, path)
        raise BadInputError(path, "video stream has no decodable frames")
    frame_times = np.asarray(times, dtype=np.float64)
    if decoded.time_origin_s is None:  # a video without audio: its times start at its first frame
        frame_times -= frame_times.min()
    video = np.stack(frames)
    if np.any(np.diff(frame_times) < 0):
        order = np.argsort(frame_times, kind="stable")
        video, frame_times = video[order], frame_times[order]
    duration_s = decoded.duration_s
    if decoded.time_origin_s is None:
        duration_s = float(frame_times[-1]) + (1.0 / fps if fps else 0.0)
    return replace(decoded, frames=video, frame_times=frame_times, fps=fps, duration_s=duration_s)


def _frame_time(path: Path, frame: av.VideoFrame, index: int, rate, origin_s: float | None) -> float:
    """A frame's presentation time from the audio's start (from the stream's start without audio); a frame
    without a timestamp is placed by the nominal rate."""
    if frame.time is not None:
        return frame.time - (origin_s or 0.0)
    if not rate:
        raise BadInputError(path, "video frames carry neither timestamps nor a frame rate")
    return index / float(rate)


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


def _pillow_image(path: Path, error: RuntimeError) -> torch.Tensor:
    """``path`` decoded by Pillow as RGB ``[3, H, W]`` uint8; ``BadInputError`` naming torchvision's ``error`` when
    Pillow cannot read it either."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            rgb = np.asarray(opened.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadInputError(path, f"not an image: {error} (it begins with {describe_start(path)})") from error
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


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
            image = _pillow_image(path, error)  # TIFF (JAFFE), BMP, PGM: formats torchvision does not decode
        if frames and image.shape != frames[0].shape:
            sizes = f"{tuple(image.shape[1:])} pixels in a sequence of {tuple(frames[0].shape[1:])}"
            raise BadInputError(path, f"frame of {sizes}")
        frames.append(image)
    if not frames:
        raise ValueError("an image sequence needs at least one frame")
    video = torch.stack(frames).permute(0, 2, 3, 1).contiguous().numpy()
    times = np.arange(len(frames), dtype=np.float64) / frame_rate
    return DecodedClip(
        np.zeros(0, np.float32), 0, video, times, float(frame_rate), len(frames) / frame_rate, has_video=True
    )


# A cut may end this much after the decoded audio (a rounded end time in a table) without being past its end.
_CUT_END_TOLERANCE_S = 0.05


def cut_clip(decoded: DecodedClip, path: str | Path, start_s: float, end_s: float | None) -> DecodedClip:
    """The span ``start_s`` to ``end_s`` (None: to the end) of ``decoded``, its times from the span's start.

    Audio is sliced by samples and ``time_origin_s`` moves to the span's start, so frames decoded later
    (``decode_video``) are on the cut's time axis; frames decoded already (image sequences) are kept when they
    lie in the span. ``BadInputError`` for a span that starts or ends past the recording's end.
    """
    duration_s = decoded.duration_s
    end = duration_s if end_s is None else end_s
    if start_s >= duration_s:
        raise BadInputError(path, f"start_s={start_s:g} is past the end of the recording ({duration_s:.3f} s)")
    if end - duration_s > _CUT_END_TOLERANCE_S:
        raise BadInputError(path, f"end_s={end:g} is past the end of the recording ({duration_s:.3f} s)")
    end = min(end, duration_s)
    cut = replace(decoded, duration_s=end - start_s)
    if decoded.audio.size:
        first, last = round(start_s * decoded.sample_rate), round(end * decoded.sample_rate)
        cut.audio = decoded.audio[first:last]
        cut.duration_s = cut.audio.size / decoded.sample_rate
    if decoded.time_origin_s is not None:
        cut.time_origin_s = decoded.time_origin_s + start_s
    if decoded.frames is not None and decoded.frame_times is not None:
        keep = (decoded.frame_times >= start_s) & (decoded.frame_times < end)
        if not keep.any():
            raise BadInputError(path, f"no frame lies between start_s={start_s:g} and end_s={end:g}")
        cut.frames, cut.frame_times = decoded.frames[keep], decoded.frame_times[keep] - start_s
    return cut
