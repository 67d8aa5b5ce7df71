"""MFCC images for the audio network (paper §3.2, Eq. 2-4).

Utterance-level static MFCC (64 mel filters 20-8000 Hz, 25 ms Hamming window, 10 ms hop, 64
coefficients), its delta and delta-delta (Eq. 4, N = 2), cut into context windows of 64 frames
shifted by 30 frames; each window becomes a 3-channel 64x64 uint8 image (static, delta,
delta-delta), every channel min-max rescaled to 0-255.

A segment of 64 frames covers (64 - 1) * 10 ms + 25 ms = 655 ms of audio, the paper's segment length.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torchaudio

N_MFCC = 64
N_MELS = 64
F_MIN_HZ = 20.0
F_MAX_HZ = 8000.0
WINDOW_MS = 25.0
HOP_MS = 10.0
SEGMENT_FRAMES = 64
SEGMENT_SHIFT = 30
DELTA_N = 2  # Eq. 4's N: the delta regression spans t-2..t+2
TOP_DB = 80.0  # log-energy floor below the utterance maximum, so digital silence stays finite


@lru_cache(maxsize=8)
def _mel_spectrogram(sample_rate: int, n_fft: int, hop: int, n_mels: int, f_min: float, f_max: float):
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=n_fft,
        win_length=n_fft,
        hop_length=hop,
        f_min=f_min,
        f_max=f_max,
        n_mels=n_mels,
        window_fn=torch.hamming_window,
        power=2.0,
        center=False,
    )


def frame_count(n_samples: int, sample_rate: int, window_ms: float = WINDOW_MS, hop_ms: float = HOP_MS) -> int:
    """Number of MFCC frames for ``n_samples`` (no centring): 1 + (N - window) // hop, at least 1."""
    window, hop = _samples(sample_rate, window_ms), _samples(sample_rate, hop_ms)
    return 1 + max(n_samples - window, 0) // hop


def _samples(sample_rate: int, ms: float) -> int:
    return round(sample_rate * ms / 1000)


def mfcc_frames(
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    *,
    n_mfcc: int = N_MFCC,
    n_mels: int = N_MELS,
    f_min: float = F_MIN_HZ,
    f_max: float = F_MAX_HZ,
    window_ms: float = WINDOW_MS,
    hop_ms: float = HOP_MS,
    representation: Literal["mfcc", "logmel"] = "mfcc",
    mean_norm: bool = False,
) -> torch.Tensor:
    """Static MFCC, delta and delta-delta of a whole utterance: float32 ``[3, n_mfcc, T]``.

    Power spectrum per Eq. 2-3 (Hamming-windowed DFT, periodogram |S|^2 / N), mel filter bank, log
    (dB, floored ``TOP_DB`` below the utterance maximum), DCT-II (orthonormal). Deltas by Eq. 4 with
    N = 2 on the utterance-level static MFCC (edges replicated); delta-delta is the delta of the delta.
    Audio shorter than one window is zero-padded to one window (one frame).
    ``representation="logmel"`` skips the DCT: the static channel is the log-mel spectrogram itself
    ``[n_mels, T]`` (an alternative input to the paper's MFCCs; ``n_mfcc`` is then unused).
    ``mean_norm=True`` subtracts each row's mean over the utterance from the static channel (cepstral /
    log-mel mean normalisation): the speaker's and the channel's fixed spectral envelope is removed and
    only its change over time is kept (deltas are unaffected, being differences along time).
    """
    if representation not in ("mfcc", "logmel"):
        raise ValueError(f"representation must be 'mfcc' or 'logmel', got {representation!r}")
    signal = torch.as_tensor(np.asarray(audio), dtype=torch.float32).reshape(-1)
    n_fft, hop = _samples(sample_rate, window_ms), _samples(sample_rate, hop_ms)
    if signal.numel() < n_fft:
        signal = torch.nn.functional.pad(signal, (0, n_fft - signal.numel()))
    mel_power = _mel_spectrogram(sample_rate, n_fft, hop, n_mels, f_min, f_max)(signal) / n_fft
    log_mel = torchaudio.functional.amplitude_to_DB(
        mel_power, multiplier=10.0, amin=1e-10, db_multiplier=0.0, top_db=TOP_DB
    )
    if representation == "logmel":
        static = log_mel  # [n_mels, T]
    else:
        dct = torchaudio.functional.create_dct(n_mfcc, n_mels, norm="ortho")  # [n_mels, n_mfcc]
        static = (log_mel.transpose(-1, -2) @ dct).transpose(-1, -2)  # [n_mfcc, T]
    if mean_norm:
        static = static - static.mean(dim=-1, keepdim=True)
    delta = torchaudio.functional.compute_deltas(static, win_length=2 * DELTA_N + 1)
    delta_delta = torchaudio.functional.compute_deltas(delta, win_length=2 * DELTA_N + 1)
    return torch.stack([static, delta, delta_delta])


def num_segments(n_frames: int, window: int = SEGMENT_FRAMES, shift: int = SEGMENT_SHIFT) -> int:
    """Context windows in ``n_frames`` MFCC frames: floor((n - window) / shift) + 1.

    A clip shorter than one window is padded to one window (edge frames repeated), so it gives 1.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    return (n_frames - window) // shift + 1 if n_frames >= window else 1


def segment_mfcc(
    features: torch.Tensor, window: int = SEGMENT_FRAMES, shift: int = SEGMENT_SHIFT, pad: str = "edge"
) -> torch.Tensor:
    """Cut ``[C, F, T]`` features into ``[K, C, F, window]`` context windows shifted by ``shift`` frames.

    Frames after the last whole window are dropped; fewer than ``window`` frames are padded to one window:
    ``pad="edge"`` repeats the last frame, ``"repeat"`` the whole utterance (its frames 0..T-1 again and
    again, cut at ``window``).
    """
    n_frames = features.shape[-1]
    if n_frames < window:
        if pad == "repeat":
            features = features[..., torch.arange(window) % n_frames]
        elif pad == "edge":
            tail = features[..., -1:].expand(*features.shape[:-1], window - n_frames)
            features = torch.cat([features, tail], dim=-1)
        else:
            raise ValueError(f"pad must be 'edge' or 'repeat', got {pad!r}")
    k = num_segments(n_frames, window, shift)
    return features.unfold(-1, window, shift)[..., :k, :].movedim(-2, 0).contiguous()


def segment_times(
    n_segments: int,
    *,
    window: int = SEGMENT_FRAMES,
    shift: int = SEGMENT_SHIFT,
    window_ms: float = WINDOW_MS,
    hop_ms: float = HOP_MS,
) -> torch.Tensor:
    """Start and end seconds ``[K, 2]`` of each segment, from the start of the analysed audio.

    Segment k starts at k * shift * hop and lasts ``segment_length_s`` (0.655 s).
    """
    starts = torch.arange(n_segments, dtype=torch.float64) * shift * hop_ms / 1000
    return torch.stack([starts, starts + segment_length_s(window, window_ms, hop_ms)], dim=-1)


def segment_times_for_duration(
    duration_s: float,
    *,
    window: int = SEGMENT_FRAMES,
    shift: int = SEGMENT_SHIFT,
    window_ms: float = WINDOW_MS,
    hop_ms: float = HOP_MS,
) -> torch.Tensor:
    """The segments ``[K, 2]`` (start, end seconds) of a clip without audio (an image sequence) lasting
    ``duration_s``: those of audio as long, so video-only segments cover 655 ms every 300 ms as in the
    paper; a clip shorter than one segment gets one, which holds all its frames."""
    n_frames = frame_count(round(duration_s * 1000), 1000, window_ms, hop_ms)  # 1000 "samples" a second: ms
    timing = {"window_ms": window_ms, "hop_ms": hop_ms}
    return segment_times(num_segments(n_frames, window, shift), window=window, shift=shift, **timing).float()


def segment_length_s(window: int = SEGMENT_FRAMES, window_ms: float = WINDOW_MS, hop_ms: float = HOP_MS) -> float:
    """Seconds of audio one segment of ``window`` MFCC frames covers: (window - 1) hops and one analysis window."""
    return ((window - 1) * hop_ms + window_ms) / 1000


SHORT_CHOICES: tuple[str, ...] = ("drop", "repeat", "zeros")


def pad_with_silence(
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    window: int = SEGMENT_FRAMES,
    *,
    window_ms: float = WINDOW_MS,
    hop_ms: float = HOP_MS,
    **_: object,
) -> np.ndarray | torch.Tensor:
    """``audio`` with zero samples appended until it gives ``window`` MFCC frames (unchanged when it does)."""
    needed = _samples(sample_rate, window_ms) + (window - 1) * _samples(sample_rate, hop_ms)
    missing = needed - len(audio)
    if missing <= 0:
        return audio
    if isinstance(audio, torch.Tensor):
        return torch.nn.functional.pad(audio.reshape(-1), (0, missing))
    return np.pad(np.asarray(audio).reshape(-1), (0, missing))


def rescale_to_uint8(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Min-max rescale ``x`` to 0-255 over ``dims`` (a constant slice gives zeros), as uint8."""
    low = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - low
    scaled = torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1.0), 0.0)
    return (scaled * 255).round().to(torch.uint8)


def mfcc_images(
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    *,
    window: int = SEGMENT_FRAMES,
    shift: int = SEGMENT_SHIFT,
    scale: Literal["segment", "utterance"] = "segment",
    short: Literal["drop", "repeat", "zeros"] = "drop",
    **mfcc_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MFCC images of an utterance (§3.2): uint8 ``[K, 3, n_mfcc, window]`` and times ``[K, 2]`` (s).

    Channels are static, delta, delta-delta, each rescaled to 0-255: ``scale="segment"`` over each
    image and channel (every image uses its full range, like an RGB picture); ``"utterance"`` over
    the whole utterance per channel, so images keep their loudness relative to each other.
    ``mfcc_kwargs`` go to ``mfcc_frames``. Times are relative to the start of ``audio``.

    Audio shorter than one window becomes one image (``SHORT_CHOICES``): ``short="drop"`` (the clip itself is
    dropped before, by ``check_duration``; a shorter speech span is padded with its last frame),
    ``"repeat"``: the utterance's frames repeated until the window is full, ``"zeros"``: zero samples (silence)
    appended to the audio until it fills one window.
    """
    if short not in SHORT_CHOICES:
        raise ValueError(f"short must be one of {SHORT_CHOICES}, got {short!r}")
    if short == "zeros":
        audio = pad_with_silence(audio, sample_rate, window, **mfcc_kwargs)
    features = mfcc_frames(audio, sample_rate, **mfcc_kwargs)
    pad = "repeat" if short == "repeat" else "edge"
    if scale == "utterance":
        features = rescale_to_uint8(features, dims=(-2, -1))
        segments = segment_mfcc(features, window, shift, pad)
    elif scale == "segment":
        segments = rescale_to_uint8(segment_mfcc(features, window, shift, pad), dims=(-2, -1))
    else:
        raise ValueError(f"scale must be 'segment' or 'utterance', got {scale!r}")
    timing = {k: mfcc_kwargs[k] for k in ("window_ms", "hop_ms") if k in mfcc_kwargs}
    return segments, segment_times(segments.shape[0], window=window, shift=shift, **timing).to(torch.float32)


AUDIO_NORMS: tuple[str, ...] = ("none", "utterance", "speaker", "corpus")  # data.audio_norm = AudioModule's input_norm


def audio_statistics(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[2, C, F]``: the mean and standard deviation of every channel and row of uint8 images ``[K, C, F, T]``
    (one clip's segments, or all those of a speaker's clips), over all their frames, on the 0-1 scale."""
    frames = torch.cat([image.float().div(255.0).movedim(-1, 1).flatten(0, 1) for image in images])  # [N, C, F]
    return torch.stack([frames.mean(dim=0), frames.std(dim=0).clamp_min(1e-3)])
