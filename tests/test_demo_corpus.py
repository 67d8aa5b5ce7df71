"""The demo corpus generator: real mp4 files that decode, deterministic, emotions that sound different."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import compose_train

from datamodules.clips import PAPER_EMOTIONS
from datamodules.corpora import demo
from datamodules.demo_corpus import (
    FACES,
    MANIFEST_NAME,
    background_image,
    draw_face,
    ensure_demo_corpus,
    generate_demo_corpus,
    main,
    make_subject,
)

SMALL = dict(subjects=1, clips_per_emotion=1, seconds=(1.9, 2.2), seed=5)
SAMPLE_RATE = 16000


def decode(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mono 16 kHz audio, RGB frames and stream facts, straight from PyAV."""
    with av.open(str(path)) as container:
        audio_stream, video_stream = container.streams.audio[0], container.streams.video[0]
        facts = {
            "audio_codec": audio_stream.codec_context.name,
            "video_codec": video_stream.codec_context.name,
            "fps": float(video_stream.average_rate),
        }
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        audio, frames = [], []
        for frame in container.decode(audio_stream, video_stream):
            if isinstance(frame, av.AudioFrame):
                audio.extend(chunk.to_ndarray().reshape(-1) for chunk in resampler.resample(frame))
            else:
                frames.append(frame.to_ndarray(format="rgb24"))
        audio.extend(chunk.to_ndarray().reshape(-1) for chunk in resampler.resample(None))
    return np.concatenate(audio), np.stack(frames), facts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return generate_demo_corpus(tmp_path_factory.mktemp("demo"), **SMALL)


@pytest.fixture(scope="module")
def decoded(corpus) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
    return {label: decode(path) for label, path in zip(PAPER_EMOTIONS, corpus)}


def speech_band_ratio(window: np.ndarray) -> float:
    """Eq. 1: energy in 300-3400 Hz over all energy."""
    power = np.abs(np.fft.rfft(window * np.hanning(window.size))) ** 2
    frequencies = np.fft.rfftfreq(window.size, 1 / SAMPLE_RATE)
    return float(power[(frequencies >= 300) & (frequencies <= 3400)].sum() / power.sum())


def active_windows(audio: np.ndarray, width: int = 640) -> np.ndarray:
    windows = audio[: audio.size // width * width].reshape(-1, width)
    rms = np.sqrt((windows**2).mean(axis=1))
    return windows[rms > 0.3 * rms.max()]


def pitch_hz(audio: np.ndarray) -> float:
    """Median autocorrelation pitch over the loud 40 ms windows."""
    estimates = []
    for window in active_windows(audio):
        correlation = np.correlate(window, window, "full")[window.size - 1 :]
        shortest, longest = SAMPLE_RATE // 400, SAMPLE_RATE // 70
        estimates.append(SAMPLE_RATE / (shortest + np.argmax(correlation[shortest:longest])))
    return float(np.median(estimates))


def test_layout_and_index(corpus):
    root = corpus[0].parent.parent
    assert [path.relative_to(root).as_posix() for path in corpus] == [
        f"s1/{code}1.mp4" for code in ("an", "di", "fe", "ha", "sa", "su")
    ]
    result = demo.index(root)
    assert [clip.label for clip in result.clips] == list(PAPER_EMOTIONS)
    assert {clip.subject for clip in result.clips} == {"s01"}
    assert json.loads((root / MANIFEST_NAME).read_text())["complete"] is True
    assert not list(root.rglob("*.partial"))


def test_clips_decode_with_audio_and_video_of_the_expected_duration(decoded):
    for label, (audio, frames, facts) in decoded.items():
        assert facts["audio_codec"] == "aac" and facts["video_codec"] in ("h264", "mpeg4")
        assert facts["fps"] == pytest.approx(30.0)
        assert frames.shape[1:] == (180, 240, 3)
        video_s = len(frames) / facts["fps"]
        assert 1.9 - 1e-6 <= video_s <= 2.2 + 1e-6, label
        assert abs(audio.size / SAMPLE_RATE - video_s) < 0.1, (label, audio.size / SAMPLE_RATE, video_s)


def test_speech_is_in_the_speech_band_and_framed_by_quiet(decoded):
    for label, (audio, _, _) in decoded.items():
        head, tail = audio[: int(0.25 * SAMPLE_RATE)], audio[-int(0.3 * SAMPLE_RATE) : -int(0.1 * SAMPLE_RATE)]
        loud = active_windows(audio)
        assert np.abs(head).max() < 0.02 and np.abs(tail).max() < 0.02, label
        assert np.sqrt((loud**2).mean()) > 0.03, label
        assert np.median([speech_band_ratio(window) for window in loud]) > 0.8, label
        assert speech_band_ratio(head) < 0.3, label


def test_emotions_differ_in_loudness_and_pitch(decoded):
    loudness = {label: float(np.sqrt((active_windows(audio) ** 2).mean())) for label, (audio, _, _) in decoded.items()}
    pitch = {label: pitch_hz(audio) for label, (audio, _, _) in decoded.items()}
    assert loudness["anger"] > 2.5 * loudness["sadness"]
    assert loudness["surprise"] > loudness["fear"]
    assert pitch["fear"] > 1.5 * pitch["sadness"]
    assert min(pitch["anger"], pitch["happiness"], pitch["surprise"]) > 1.2 * max(pitch["sadness"], pitch["disgust"])


def mouth_interior_pixels(frames: np.ndarray) -> np.ndarray:
    """Per frame, how many pixels have the colour of the open mouth's inside."""
    return np.all(np.abs(frames.astype(int) - (60, 15, 20)) < 35, axis=-1).sum(axis=(-2, -1))


def test_mouth_opens_wider_for_every_emotion():
    subject = make_subject(1, seed=0)
    background = background_image(subject, (320, 240), np.random.default_rng(0))
    for label, face in FACES.items():
        closed, open_ = (draw_face(background, subject, face, opening, (160, 120)) for opening in (0.0, 1.0))
        assert mouth_interior_pixels(open_) > mouth_interior_pixels(closed) + 60, label


def test_mouth_opening_follows_the_audio_envelope(decoded):
    correlations = {}
    for label, (audio, frames, facts) in decoded.items():
        per_frame = int(SAMPLE_RATE / facts["fps"])
        envelope = [np.sqrt(np.mean(audio[i * per_frame : (i + 1) * per_frame] ** 2)) for i in range(len(frames))]
        correlations[label] = np.corrcoef(mouth_interior_pixels(frames), envelope)[0, 1]
    assert correlations["surprise"] > 0.6 and np.mean(list(correlations.values())) > 0.4, correlations


def test_faces_differ_between_emotions(decoded):
    middle = {label: frames[len(frames) // 2].astype(float) for label, (_, frames, _) in decoded.items()}
    assert np.abs(middle["happiness"] - middle["sadness"]).mean() > 1.0
    assert np.abs(middle["anger"] - middle["surprise"]).mean() > 1.0


def test_generation_is_deterministic(corpus, decoded, tmp_path):
    again = generate_demo_corpus(tmp_path, **SMALL)
    for label, path in zip(PAPER_EMOTIONS, again):
        audio, frames, _ = decode(path)
        np.testing.assert_array_equal(audio, decoded[label][0])
        np.testing.assert_array_equal(frames, decoded[label][1])


def test_ensure_reuses_complete_corpus_and_refills_gaps(tmp_path):
    parameters = dict(SMALL, seconds=(1.9, 1.9), size=(160, 120))
    paths = ensure_demo_corpus(tmp_path, **parameters)
    stamps = {path: path.stat().st_mtime_ns for path in paths}
    assert ensure_demo_corpus(tmp_path, **parameters) == paths
    assert {path: path.stat().st_mtime_ns for path in paths} == stamps
    paths[2].unlink()
    assert ensure_demo_corpus(tmp_path, **parameters) == paths and paths[2].is_file()
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in stamps.items() if path != paths[2])
    with pytest.raises(ValueError, match="delete the folder"):
        ensure_demo_corpus(tmp_path, **dict(parameters, seed=6))


def test_bad_parameters_are_refused(tmp_path):
    with pytest.raises(ValueError, match="seconds"):
        generate_demo_corpus(tmp_path, seconds=(1.0, 2.0))
    with pytest.raises(ValueError, match="even"):
        generate_demo_corpus(tmp_path, size=(321, 240))
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_command_line(tmp_path, capsys):
    main(
        [
            "--out",
            str(tmp_path),
            "--subjects",
            "2",
            "--clips-per-emotion",
            "1",
            "--seconds",
            "1.9",
            "1.9",
            "--size",
            "96",
            "64",
            "--fps",
            "10",
        ]
    )
    assert "12 clips under" in capsys.readouterr().out
    clips = demo.index(tmp_path).clips
    assert len(clips) == 12 and {clip.subject for clip in clips} == {"s01", "s02"}
    _, frames, facts = decode(clips[0].path)
    assert frames.shape == (19, 64, 96, 3) and facts["fps"] == pytest.approx(10.0)


def test_preprocessing_defaults_keep_every_demo_clip(tiny_demo):
    """Clips without speech and clips shorter than one segment are dropped by default: the demo has none."""
    from hydra.utils import instantiate

    report = instantiate(compose_train(tiny_demo).data).prepare_data().report
    assert report["files"] == {
        "found": 3 * 6 + 1,
        "prepared": 3 * 6,
        "dropped": 0,
        "excluded": 0,
        "skipped": 0,
        "other_files": 1,  # + manifest
    }
    assert report["dropped"] == {} and report["vad_not_found"] == []
