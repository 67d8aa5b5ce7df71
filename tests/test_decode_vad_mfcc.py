"""Decoding, VAD (Eq. 1) and MFCC images (Eq. 2-4) on real recordings."""

import subprocess
import sys
import wave

import av
import numpy as np
import pytest
import torch
import torchaudio
from audio_trees import write_wav
from conftest import REPO, without_read_override

from datamodules.decode import BadInputError, decode_clip
from datamodules.mfcc import frame_count, mfcc_frames, mfcc_images, num_segments, segment_mfcc
from datamodules.vad import (
    DEFAULT_POST_S,
    DEFAULT_PRE_S,
    detect_speech_span,
    plot_vad,
    speech_band_ratio,
    window_speech_ratios,
)

SR = 16000
# A spread of actors (odd male, even female), emotions, intensities and statements.
RAVDESS_FILES = [
    "Actor_01/03-01-01-01-01-01-01.flac",  # neutral
    "Actor_04/03-01-05-02-01-02-04.flac",  # angry, strong
    "Actor_07/03-01-03-01-02-01-07.flac",  # happy
    "Actor_12/03-01-04-02-01-01-12.flac",  # sad, strong
    "Actor_15/03-01-06-01-02-02-15.flac",  # fearful
    "Actor_20/03-01-08-02-02-01-20.flac",  # surprised, strong
]


@pytest.fixture(scope="module")
def av_clip(ravdess_av_clip):
    return decode_clip(ravdess_av_clip)


def loud_speech_extent(audio: np.ndarray, sample_rate: int, below_max_db: float = 20.0) -> tuple[float, float]:
    """First and last 20 ms frame whose RMS above 100 Hz is within ``below_max_db`` of the loudest.

    Independent of the VAD: a plain energy envelope, high-passed so that microphone thumps and
    breath pops (below 100 Hz) do not count as speech.
    """
    spectrum = np.fft.rfft(audio.astype(np.float64))
    spectrum[np.fft.rfftfreq(audio.size, 1 / sample_rate) < 100] = 0
    high_passed = np.fft.irfft(spectrum, audio.size)
    frame = sample_rate // 50
    n = audio.size // frame
    rms = np.sqrt((high_passed[: n * frame].reshape(n, frame) ** 2).mean(axis=1))
    loud = np.flatnonzero(20 * np.log10(np.maximum(rms, 1e-12) / rms.max()) >= -below_max_db)
    return loud[0] * frame / sample_rate, (loud[-1] + 1) * frame / sample_rate


# ---------------------------------------------------------------- decode


@pytest.mark.shared
def test_real_av_clip_decodes(av_clip):
    assert av_clip.sample_rate == SR
    assert av_clip.audio.dtype == np.float32 and av_clip.audio.ndim == 1
    assert av_clip.duration_s == pytest.approx(4.0, abs=0.1)
    assert 0.01 < np.abs(av_clip.audio).max() <= 1.0
    assert av_clip.frames.shape == (120, 480, 640, 3) and av_clip.frames.dtype == np.uint8
    assert av_clip.fps == pytest.approx(29.97, abs=0.01)
    times = av_clip.frame_times
    assert times.shape == (120,) and times.dtype == np.float64
    assert abs(times[0]) < 0.05
    assert np.allclose(np.diff(times), 1 / 29.97, atol=1e-3)
    # same origin as the audio: the last frame is shown during the last 1/fps of the audio
    assert times[-1] == pytest.approx(av_clip.duration_s - 1 / 29.97, abs=0.05)


@pytest.mark.shared
def test_audio_only_container_has_no_frames(ravdess_speech_root):
    clip = decode_clip(ravdess_speech_root / RAVDESS_FILES[0], with_video=True)
    assert clip.frames is None and clip.frame_times is None and clip.fps is None
    assert clip.audio.shape[0] == pytest.approx(3.3 * SR, rel=0.01)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.mp4"
    with pytest.raises(BadInputError, match="not found") as error:
        decode_clip(path)
    assert error.value.path == str(path) and str(path) in str(error.value)


def test_random_bytes_are_bad_input(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(BadInputError) as error:
        decode_clip(path)
    assert str(path) in str(error.value) and error.value.reason


@pytest.mark.shared
@pytest.mark.parametrize("kept_fraction", [0.2, 0.5])  # caught by the declared duration / by FFmpeg
def test_truncated_mp4_is_bad_input(ravdess_av_clip, tmp_path, kept_fraction):
    data = ravdess_av_clip.read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: int(len(data) * kept_fraction)])
    with pytest.raises(BadInputError, match="truncated") as error:
        decode_clip(path)
    assert str(path) in str(error.value)


def test_video_without_audio_track(tmp_path):
    path = tmp_path / "silent_film.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(BadInputError, match="no audio stream: a video-only file") as error:
        decode_clip(path)
    assert error.value.path == str(path)
    silent = decode_clip(path, audio_required=False)  # predict.py: the visual model alone
    assert silent.audio.size == 0 and silent.frames.shape == (10, 48, 64, 3)
    assert silent.frame_times.tolist() == pytest.approx(np.arange(10) / 25) and silent.duration_s == pytest.approx(0.4)
    with pytest.raises(BadInputError, match="no audio stream"):
        decode_clip(path, with_video=False, audio_required=False)


def test_zero_length_audio(tmp_path):
    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SR)
        wav.writeframes(b"")
    with pytest.raises(BadInputError, match="zero length"):
        decode_clip(path)


def test_empty_and_text_files_named_as_media(tmp_path):
    empty, text = tmp_path / "empty.flac", tmp_path / "readme.flac"
    empty.touch()
    text.write_text("This is a readme, not a recording.\n")
    with pytest.raises(BadInputError) as error:
        decode_clip(empty)
    assert error.value.reason == "empty file (0 bytes)"
    with pytest.raises(BadInputError) as error:
        decode_clip(text)  # FFmpeg's flac reader opens it by its name and finds no header
    assert error.value.reason == "not a media file: no flac header; it begins with text 'This is a readme, not a '"


def test_unreadable_file_says_permission_denied(tmp_path):
    path = tmp_path / "locked.wav"
    write_wav(path, np.zeros(SR // 10))
    path.chmod(0)
    probe = f"from datamodules.decode import decode_clip\ndecode_clip({str(path)!r})"
    result = subprocess.run(
        without_read_override([sys.executable, "-c", probe]), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    reason = "permission denied: the file is not readable by this user"
    assert result.stderr.strip().endswith(f"BadInputError: {path}: {reason}")


# ---------------------------------------------------------------- VAD


def test_speech_band_ratio_eq1():
    t = np.arange(SR) / SR
    in_band, below_band = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 50 * t)
    ratios, _, _ = window_speech_ratios(in_band, SR)
    assert ratios.min() > 0.99
    ratios, _, _ = window_speech_ratios(below_band, SR)
    assert ratios.max() < 0.05
    ratios, _, _ = window_speech_ratios(in_band + below_band, SR)  # equal power in and out of band
    assert np.median(ratios) == pytest.approx(0.5, abs=0.05)

    power = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    freqs = torch.tensor([50.0, 500.0, 2000.0, 6000.0])
    assert speech_band_ratio(power, freqs, (100.0, 4000.0)).tolist() == pytest.approx([0.5, 0.0])


@pytest.mark.shared
def test_vad_trims_real_av_clip(av_clip):
    result = detect_speech_span(av_clip.audio, SR)
    onset, offset = loud_speech_extent(av_clip.audio, SR)
    assert result.found
    # the clip opens with ~0.5 s of digital silence and closes with ~0.7 s of near-silence
    assert 0.3 < result.start_s <= onset
    assert offset <= result.end_s < av_clip.duration_s - 0.5


@pytest.mark.shared
@pytest.mark.parametrize("name", RAVDESS_FILES)
def test_vad_on_ravdess_keeps_speech_and_drops_silence(ravdess_speech_root, name):
    audio = decode_clip(ravdess_speech_root / name).audio
    duration = audio.size / SR
    onset, offset = loud_speech_extent(audio, SR)
    result = detect_speech_span(audio, SR)
    assert result.found
    tolerance = 0.3
    # does not cut into the loud speech ...
    assert result.start_s <= onset and result.end_s >= offset
    # ... and removes the silence before and after it, up to the δ1/δ2 margins
    assert 0 < result.start_s and onset - DEFAULT_PRE_S - tolerance <= result.start_s
    assert result.end_s < duration and result.end_s <= offset + DEFAULT_POST_S + tolerance
    assert result.end_s - result.start_s < duration - 0.5


def test_vad_on_silence_keeps_whole_clip():
    for audio in (np.zeros(2 * SR, np.float32), np.full(2 * SR, 1e-3, np.float32)):
        result = detect_speech_span(audio, SR)
        assert not result.found and not result.active.any()
        assert (result.start_s, result.end_s) == (0.0, 2.0)
        assert np.isfinite(result.ratios).all()


@pytest.mark.parametrize("seconds", [0.05, 0.12])  # fewer windows than the median filter's 11
def test_vad_on_clips_shorter_than_its_median_filter(seconds):
    t = np.arange(round(seconds * SR)) / SR
    result = detect_speech_span((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)
    assert result.active.shape == result.ratios.shape == result.window_times.shape
    assert (result.start_s, result.end_s) == (0.0, pytest.approx(seconds))


def test_vad_span_is_clamped_to_clip():
    t = np.arange(SR) / SR
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # "speech" from the first sample to the last
    result = detect_speech_span(tone, SR)
    assert result.found and result.start_s == 0.0 and result.end_s == pytest.approx(1.0)


@pytest.mark.shared
def test_plot_vad_writes_png(av_clip, tmp_path):
    result = detect_speech_span(av_clip.audio, SR)
    path = plot_vad(av_clip.audio, SR, result, tmp_path / "plots" / "vad.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- MFCC


def test_num_segments():
    assert [num_segments(n) for n in (1, 63, 64, 93, 94, 124, 200)] == [1, 1, 1, 1, 2, 3, 5]


@pytest.mark.shared
@pytest.mark.parametrize("name", RAVDESS_FILES[:3])
def test_mfcc_images_of_trimmed_ravdess_speech(ravdess_speech_root, name):
    audio = decode_clip(ravdess_speech_root / name).audio
    span = detect_speech_span(audio, SR)
    trimmed = audio[round(span.start_s * SR) : round(span.end_s * SR)]
    n_frames = 1 + (trimmed.size - 400) // 160
    assert frame_count(trimmed.size, SR) == n_frames
    assert mfcc_frames(trimmed, SR).shape == (3, 64, n_frames)

    images, times = mfcc_images(trimmed, SR)
    k = (n_frames - 64) // 30 + 1
    assert images.shape == (k, 3, 64, 64) and images.dtype == torch.uint8
    assert (images.amin(dim=(-2, -1)) == 0).all() and (images.amax(dim=(-2, -1)) == 255).all()
    assert times.shape == (k, 2) and times.dtype == torch.float32
    assert torch.allclose(times[:, 0], torch.arange(k) * 0.3)
    assert torch.allclose(times[:, 1] - times[:, 0], torch.full((k,), 0.655))


def test_deltas_follow_eq4():
    audio = np.random.default_rng(1).standard_normal(SR).astype(np.float32)
    static, delta, delta_delta = mfcc_frames(audio, SR)
    padded = torch.nn.functional.pad(static[None], (2, 2), mode="replicate")[0]
    t = static.shape[-1]
    expected = sum(n * (padded[:, 2 + n : 2 + n + t] - padded[:, 2 - n : 2 - n + t]) for n in (1, 2)) / (2 * (1 + 4))
    assert torch.allclose(delta, expected, atol=1e-4)
    padded = torch.nn.functional.pad(delta[None], (2, 2), mode="replicate")[0]
    expected = sum(n * (padded[:, 2 + n : 2 + n + t] - padded[:, 2 - n : 2 - n + t]) for n in (1, 2)) / 10
    assert torch.allclose(delta_delta, expected, atol=1e-4)


def test_utterance_scale_is_shared_across_segments():
    audio = np.random.default_rng(2).standard_normal(2 * SR).astype(np.float32)
    images, _ = mfcc_images(audio, SR, scale="utterance")
    assert images.shape[0] >= 3
    # overlapping segments show the same frames with the same pixel values
    assert torch.equal(images[0][..., 30:], images[1][..., :34])
    segment_scaled, _ = mfcc_images(audio, SR, scale="segment")
    assert not torch.equal(images, segment_scaled)


def test_silence_and_short_audio_give_finite_images():
    images, times = mfcc_images(np.zeros(SR, np.float32), SR)
    assert images.shape == (num_segments(frame_count(SR, SR)), 3, 64, 64)
    short = np.random.default_rng(3).standard_normal(SR // 4).astype(np.float32)  # 23 frames < 64
    images, times = mfcc_images(short, SR)
    assert images.shape == (1, 3, 64, 64)
    assert times.tolist() == [[0.0, pytest.approx(0.655)]]
    features = mfcc_frames(short, SR)
    padded = segment_mfcc(features)[0]
    assert torch.equal(padded[..., -1], features[..., -1]) and torch.equal(padded[..., 23], features[..., -1])
    assert torch.isfinite(mfcc_frames(np.zeros(100, np.float32), SR)).all()


def test_logmel_representation_is_the_mfcc_before_its_dct():
    torch.manual_seed(0)
    audio = torch.randn(16000).numpy()
    mfcc, logmel = mfcc_frames(audio, 16000), mfcc_frames(audio, 16000, representation="logmel", n_mels=40)
    assert logmel.shape == (3, 40, mfcc.shape[-1])
    paper_logmel = mfcc_frames(audio, 16000, representation="logmel")
    dct = torchaudio.functional.create_dct(64, 64, norm="ortho")
    assert torch.allclose((paper_logmel[0].T @ dct).T, mfcc[0], atol=1e-3)
    with pytest.raises(ValueError, match="representation"):
        mfcc_frames(audio, 16000, representation="cqt")


def test_mean_norm_removes_each_rows_utterance_mean_and_keeps_the_deltas():
    torch.manual_seed(0)
    audio = torch.randn(16000) * 0.1
    for representation in ("mfcc", "logmel"):
        plain = mfcc_frames(audio, 16000, representation=representation)
        normed = mfcc_frames(audio, 16000, representation=representation, mean_norm=True)
        assert torch.allclose(normed[0], plain[0] - plain[0].mean(dim=-1, keepdim=True), atol=1e-4)
        assert torch.allclose(normed[0].mean(dim=-1), torch.zeros(normed.shape[1]), atol=1e-3)
        assert torch.allclose(normed[1:], plain[1:], atol=1e-3)
