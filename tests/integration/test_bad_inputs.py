"""Fault isolation in preprocessing: a corpus of broken clips beside good ones, prepared by the real
``prepare.py``, twice. Every bad input is real media (or a real non-media file) written at test time with
FFmpeg through PyAV."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from datamodules.clips import Clip
from datamodules.decode import decode_clip
from datamodules.demo_corpus import VIDEO_CODEC, generate_clip, make_subject
from datamodules.preprocess import TooManyFailuresError, prepare_corpus
from tests.helpers.audio_trees import SAMPLE_RATE, voice, write_wav
from tests.helpers.configs import audio_cfg
from tests.helpers.paths import REPO, without_read_override

VIDEO_SIZE = (128, 96)  # small frames in which MTCNN still finds the demo's drawn faces
FPS = 25


def write_audio(path: Path, audio: np.ndarray, *, rate: int, layout: str = "mono", codec: str = "flac") -> Path:
    """``audio`` (mono float at 16 kHz) encoded by FFmpeg as ``codec`` at ``rate`` Hz with ``layout`` channels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        resampler = av.AudioResampler(format=stream.codec_context.format, layout=layout, rate=rate, frame_size=1024)
        samples = np.ascontiguousarray(audio[None], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for chunk in resampler.resample(frame) + resampler.resample(None):
            container.mux(stream.encode(chunk))
        container.mux(stream.encode())
    return path


def write_mp4(
    path: Path, frames: np.ndarray | None = None, frame_times: np.ndarray | None = None, audio: np.ndarray | None = None
) -> Path:
    """An mp4 of H.264 (MPEG-4 without libx264) ``frames`` shown at ``frame_times`` (s, kept to the
    millisecond, so a variable frame rate stays variable) and/or AAC ``audio`` (mono, 16 kHz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    millisecond = Fraction(1, 1000)
    with av.open(str(path), "w", format="mp4") as container:
        if frames is not None:
            video = container.add_stream(VIDEO_CODEC, rate=FPS)
            video.height, video.width = frames.shape[1:3]
            video.pix_fmt = "yuv420p"
            video.codec_context.time_base = millisecond
        if audio is not None:
            sound = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        if frames is not None:
            for rgb, time_s in zip(frames, frame_times):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = round(time_s * 1000), millisecond
                container.mux(video.encode(frame))
            container.mux(video.encode())
        if audio is not None:
            for start in range(0, audio.size, 1024):
                chunk = np.ascontiguousarray(audio[None, start : start + 1024], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
                container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


def demo_clip(path: Path, subject: int, emotion: str) -> Path:
    """A demo-corpus clip (drawn face, synthetic voice) at ``VIDEO_SIZE``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    generate_clip(
        path,
        make_subject(subject, seed=0),
        emotion,
        1,
        seconds=(1.9, 2.2),
        size=VIDEO_SIZE,
        fps=FPS,
        sample_rate=SAMPLE_RATE,
        seed=0,
    )
    return path


def truncated_copy(source: Path, path: Path, kept_fraction: float = 0.6) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * kept_fraction)])
    return path


def unreadable(path: Path) -> Path:
    path.chmod(0)
    return path


def hum(seconds: float = 2.0) -> np.ndarray:
    """50 Hz mains hum at a normal level: loud, but nothing in the speech band."""
    return (0.3 * np.sin(2 * np.pi * 50 * np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE)).astype(np.float32)


# --- the audio corpus: RAVDESS layout, audio only --------------------------------------------------

TOO_SHORT = (
    "too short: {:.3f} s of audio, one segment of 64 MFCC frames needs 0.655 s; "
    "data.preprocess.mfcc.short=repeat pads it to one"
)
NO_SPEECH = (
    "no speech found by the VAD: no 30 ms window has a speech-band ratio >= 0.6 within 30 dB of the loudest "
    "(after a median over 11 windows); no_speech=keep keeps such clips whole"
)
# clip id -> (step, reason as a regular expression) of every clip the audio corpus must drop
AUDIO_DROPPED = {
    "03-01-05-02-01-01-01": ("duration", re.escape(TOO_SHORT.format(0.05))),
    "03-01-05-02-01-02-01": ("duration", re.escape(TOO_SHORT.format(0.12))),  # once an IndexError in the VAD
    "03-01-05-02-02-01-01": ("vad", re.escape("silent: every sample is zero")),
    "03-01-05-02-02-02-01": ("vad", re.escape(NO_SPEECH)),
    "03-01-04-02-01-01-01": (
        "decode",
        re.escape("not a media file: no flac header; it begins with text 'Actor 1, take 3: see the'"),
    ),
    "03-01-04-02-01-02-01": ("decode", re.escape("empty file (0 bytes)")),
    "03-01-04-02-02-01-01": ("decode", r"corrupt or truncated stream \(.*\)"),
    "03-01-04-02-02-02-01": ("decode", re.escape("permission denied: the file is not readable by this user")),
}
AUDIO_PREPARED = [
    "03-01-05-01-01-01-01",
    "03-01-04-01-01-01-01",
    "03-01-03-01-01-01-02",
    "03-01-06-01-01-01-02",
    "03-01-07-01-01-01-02",  # stereo 44.1 kHz flac
    "03-01-08-01-01-01-02",  # 8 kHz wav
    "03-01-03-01-02-01-02",  # stereo 22.05 kHz wav
    "03-01-03-01-01-01-03",  # a link to a file outside the root
    "03-01-06-01-01-01-04",  # in a linked folder outside the root
    "03-01-07-01-01-01-04",
]


def make_audio_corpus(base: Path) -> Path:
    """The audio corpus under ``base/audio`` (its root), with files outside the root that links point to."""
    root, outside = base / "audio", base / "outside"
    a1, a2 = root / "Actor_01", root / "Actor_02"
    write_wav(a1 / "03-01-05-01-01-01-01.wav", voice("anger", 1, 0))
    write_wav(a1 / "03-01-04-01-01-01-01.wav", voice("sadness", 1, 1))
    write_wav(a2 / "03-01-03-01-01-01-02.wav", voice("happiness", 2, 0))
    write_wav(a2 / "03-01-06-01-01-01-02.wav", voice("fear", 2, 1))
    write_audio(a2 / "03-01-07-01-01-01-02.flac", voice("disgust", 2, 2), rate=44100, layout="stereo")
    write_audio(a2 / "03-01-08-01-01-01-02.wav", voice("surprise", 2, 3), rate=8000, codec="pcm_s16le")
    write_audio(
        a2 / "03-01-03-01-02-01-02.wav", voice("happiness", 2, 4), rate=22050, layout="stereo", codec="pcm_s16le"
    )
    # dropped
    write_wav(a1 / "03-01-05-02-01-01-01.wav", voice("anger", 1, 2)[: round(0.05 * SAMPLE_RATE)])
    write_wav(a1 / "03-01-05-02-01-02-01.wav", voice("anger", 1, 3)[: round(0.12 * SAMPLE_RATE)])
    write_wav(a1 / "03-01-05-02-02-01-01.wav", np.zeros(2 * SAMPLE_RATE))
    write_wav(a1 / "03-01-05-02-02-02-01.wav", hum())
    (a1 / "03-01-04-02-01-01-01.flac").write_text("Actor 1, take 3: see the notes in the lab book.\n")
    (a1 / "03-01-04-02-01-02-01.wav").touch()
    truncated_copy(a2 / "03-01-07-01-01-01-02.flac", a1 / "03-01-04-02-02-01-01.flac")
    unreadable(write_wav(a1 / "03-01-04-02-02-02-01.wav", voice("sadness", 1, 4)))
    # excluded by selection, skipped by the indexer, other files
    write_wav(a1 / "03-01-01-01-01-01-01.wav", voice("sadness", 1, 5))  # neutral
    write_wav(a1 / "03-02-03-01-01-01-01.wav", voice("happiness", 1, 6))  # song
    write_wav(a1 / "03-01-05-01-01-01.wav", voice("anger", 1, 7))  # six fields
    write_wav(a1 / "take 3 (copy).wav", voice("anger", 1, 8))
    (root / "README.txt").write_text("Recorded in the small booth.\n")
    write_wav(a1 / "._03-01-05-01-01-01-01.wav", np.zeros(10))  # a macOS resource fork
    # links: to a file and to a folder outside the root, back to the root (a cycle), to nothing
    (root / "Actor_03").mkdir()
    linked_file = write_wav(outside / "kept.wav", voice("happiness", 3, 0))
    (root / "Actor_03" / "03-01-03-01-01-01-03.wav").symlink_to(linked_file)
    write_wav(outside / "Actor_04" / "03-01-06-01-01-01-04.wav", voice("fear", 4, 0))
    write_wav(outside / "Actor_04" / "03-01-07-01-01-01-04.wav", voice("disgust", 4, 0))
    (root / "Actor_04").symlink_to(outside / "Actor_04", target_is_directory=True)
    (root / "Actor_03" / "again").symlink_to(root, target_is_directory=True)
    (root / "Actor_03" / "03-01-04-01-01-01-03.wav").symlink_to(outside / "deleted.wav")
    write_wav(root / "Actor_05" / "03-01-05-01-01-01-05.wav", voice("anger", 5, 0))
    (root / "Actor_05").chmod(0)  # a folder nobody may list
    return root


# --- the video corpus: RML layout, mp4 ------------------------------------------------------------

VIDEO_DROPPED = {
    "s03_fe01": ("decode", re.escape("audio only: no video stream, and this corpus is audio-visual (video: true)")),
    "s03_di01": ("decode", re.escape("no audio stream: a video-only file")),
    "s03_an01": ("faces", r"no face detected in any of its \d+ frames"),
}
VIDEO_PREPARED = ["s01_an01", "s01_ha01", "s02_sa01", "s02_su01"]


def make_video_corpus(base: Path) -> Path:
    root = base / "video"
    good = demo_clip(root / "s1" / "an1.mp4", 1, "anger")
    demo_clip(root / "s1" / "ha1.mp4", 2, "happiness")
    demo_clip(root / "s2" / "sa1.mp4", 3, "sadness")
    decoded = decode_clip(good)
    # variable frame rate: frames 30 ms and 50 ms apart in turn (25 fps on average)
    vfr_times = np.concatenate([[0.0], np.cumsum(np.resize([0.03, 0.05], len(decoded.frames) - 1))])
    write_mp4(root / "s2" / "su1.mp4", decoded.frames, vfr_times, decoded.audio)
    write_mp4(root / "s3" / "fe1.mp4", audio=decoded.audio)
    write_mp4(root / "s3" / "di1.mp4", decoded.frames, decoded.frame_times)
    grey = np.full_like(decoded.frames, 128)
    write_mp4(root / "s3" / "an1.mp4", grey, decoded.frame_times, decoded.audio)
    return root


# --- running prepare.py ----------------------------------------------------------------------------


def run_prepare(overrides: list[str]) -> subprocess.CompletedProcess:
    """``python prepare.py <overrides>`` in a subprocess that file permissions bind (see conftest)."""
    command = without_read_override([sys.executable, "prepare.py", *overrides])
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def cache_state(folder: Path) -> dict[str, int]:
    """Every file in a cache folder (plots aside) with its modification time."""
    return {
        path.name: path.stat().st_mtime_ns
        for path in folder.iterdir()
        if path.is_file() and path.name not in ("report.json", "preprocess.json")
    }


def prepared_twice(base: Path, make_corpus: Callable[[Path], Path], overrides: list[str]) -> dict:
    """Build a corpus, run prepare.py on it twice; the reports, terminal output and cache of both runs."""
    root = make_corpus(base)
    arguments = [
        f"data.root={root}",
        f"paths.cache_dir={base / 'cache'}",
        f"paths.output_dir={base / 'outputs'}",
        *overrides,
    ]
    first = run_prepare(arguments)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (report_path,) = (base / "cache").glob("*/*/report.json")
    folder = report_path.parent
    report, state = json.loads(report_path.read_text()), cache_state(folder)
    second = run_prepare(arguments)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {
        "root": root,
        "folder": folder,
        "first": first,
        "report": report,
        "state": state,
        "second": second,
        "again": json.loads(report_path.read_text()),
        "state_again": cache_state(folder),
    }


@pytest.fixture(scope="module")
def audio_runs(tmp_path_factory) -> dict:
    return prepared_twice(
        tmp_path_factory.mktemp("bad_audio"), make_audio_corpus, ["experiment=paper_ravdess_kfold", "vad_plots=4"]
    )


@pytest.fixture(scope="module")
def video_runs(tmp_path_factory) -> dict:
    overrides = [
        "data=rml",
        "+data.indexer.extensions=[.mp4]",
        "data.preprocess.faces.size=32",
        "data.preprocess.faces.detect_max_side=160",
        "vad_plots=0",
    ]
    return prepared_twice(tmp_path_factory.mktemp("bad_video"), make_video_corpus, overrides)


def assert_dropped_and_prepared(runs: dict, dropped: dict[str, tuple[str, str]], prepared: list[str]) -> None:
    """Each bad clip dropped at its step with its reason, on the terminal too; every good clip prepared;
    the cache holds a clip file per prepared clip, a verdict per dropped one, and nothing half-written."""
    report, output = runs["report"], runs["first"].stdout
    assert set(report["dropped"]) == set(dropped)
    for clip_id, (step, reason) in dropped.items():
        failure = report["dropped"][clip_id]
        assert failure["step"] == step and re.fullmatch(reason, failure["reason"]), (clip_id, failure)
        assert failure["error"] in ("BadInputError", "NoFaceError")
        assert f"dropped {clip_id}: {step}: {failure['error']}: {failure['reason']} ({failure['path']})" in output
    assert report["clips_prepared"] == len(prepared)
    assert sorted(runs["state"]) == sorted(
        [f"{clip_id}.pt" for clip_id in prepared] + [f"{clip_id}.dropped.json" for clip_id in dropped]
    )


def assert_nothing_redone(runs: dict) -> None:
    again = runs["again"]
    assert again["clips_processed_now"] == 0 and again["dropped"] == runs["report"]["dropped"]
    assert runs["state_again"] == runs["state"]
    tried_again = [line for line in runs["second"].stdout.splitlines() if re.match(r"dropped \S+: ", line)]
    assert tried_again == []


def test_audio_corpus_runs_through_its_bad_clips(audio_runs):
    assert_dropped_and_prepared(audio_runs, AUDIO_DROPPED, AUDIO_PREPARED)


def test_audio_report_accounts_for_every_file_under_the_root(audio_runs):
    report, root = audio_runs["report"], audio_runs["root"]
    assert report["files"] == {"found": 26, "prepared": 10, "dropped": 8, "excluded": 2, "skipped": 4, "other_files": 2}
    assert dict(map(tuple, report["excluded"])) == {
        str(root / "Actor_01" / "03-01-01-01-01-01-01.wav"): "class neutral not in classes",
        str(root / "Actor_01" / "03-02-03-01-01-01-01.wav"): "song channel, not speech (vocal_channel)",
    }
    skipped = dict(map(tuple, report["skipped"]))
    assert sorted(skipped) == sorted(
        str(root / name)
        for name in (
            "Actor_01/03-01-05-01-01-01.wav",
            "Actor_01/take 3 (copy).wav",
            "Actor_03/03-01-04-01-01-01-03.wav",
            "Actor_05",
        )
    )
    assert skipped[str(root / "Actor_05")] == "folder not readable (Permission denied): the files in it are not indexed"
    assert "is not MM-VV-EE-II-SS-RR-AA" in skipped[str(root / "Actor_01" / "take 3 (copy).wav")]
    assert skipped[str(root / "Actor_03" / "03-01-04-01-01-01-03.wav")].startswith("broken symbolic link")
    output = audio_runs["first"].stdout
    assert (
        "files under the root: 26 = 10 prepared + 8 dropped + 2 excluded by selection + 4 skipped by the indexer"
        " + 2 other files (no recordings by name)" in output
    )
    assert "  class neutral not in classes: 1" in output and "skipped by the indexer: 4" in output


def test_vad_plots_sample_clips_across_classes_and_subjects(audio_runs):
    plots = sorted(path.stem for path in (audio_runs["folder"] / "vad_plots").glob("*.png"))
    assert len(plots) == 4
    labels = {clip_id.split("-")[2] for clip_id in plots}
    actors = {clip_id.split("-")[6] for clip_id in plots}
    assert len(labels) == 4 and len(actors) >= 3


def test_audio_corpus_second_run_redoes_nothing(audio_runs):
    assert_nothing_redone(audio_runs)


def test_video_corpus_runs_through_its_bad_clips(video_runs):
    assert_dropped_and_prepared(video_runs, VIDEO_DROPPED, VIDEO_PREPARED)
    assert video_runs["report"]["clips_per_subject"] == {"s01": 2, "s02": 2}  # s02_su01 has a variable frame rate
    assert video_runs["report"]["files"] == {
        "found": 7,
        "prepared": 4,
        "dropped": 3,
        "excluded": 0,
        "skipped": 0,
        "other_files": 0,
    }


def test_video_corpus_second_run_redoes_nothing(video_runs):
    assert_nothing_redone(video_runs)


def test_a_run_where_most_clips_fail_stops_with_the_commonest_reasons(tmp_path):
    good = Clip("good", write_wav(tmp_path / "good.wav", voice("anger", 1, 0)), "actor_01", "anger")
    texts = [tmp_path / f"notes{k}.flac" for k in range(2)]
    for path in texts:
        path.write_text(f"{path.name}: not a recording\n")
    (tmp_path / "empty.wav").touch()
    clips = [good] + [Clip(path.stem, path, "actor_01", "anger") for path in [*texts, tmp_path / "empty.wav"]]
    with pytest.raises(TooManyFailuresError) as error:
        prepare_corpus(clips, audio_cfg(), tmp_path / "cache", corpus="ravdess", workers=1, progress=False)
    message = str(error.value)
    assert "3 of 4 clips failed, more than max_failed_fraction=0.5" in message
    assert "  2 x decode: BadInputError: not a media file: no flac header\n" in message
    assert "  1 x decode: BadInputError: empty file" in message
    report = json.loads(next((tmp_path / "cache").glob("ravdess/*/report.json")).read_text())
    assert report["dropped_by_reason"] == {
        "decode: BadInputError: not a media file: no flac header": 2,
        "decode: BadInputError: empty file": 1,
    }


@pytest.mark.parametrize("setting, value", [("no_speech", "skip"), ("max_failed_fraction", 1.5)])
def test_meaningless_failure_settings_are_refused_before_any_clip(tmp_path, setting, value):
    cfg = audio_cfg()
    cfg[setting] = value
    clip = Clip("good", write_wav(tmp_path / "good.wav", voice("anger", 1, 0)), "actor_01", "anger")
    with pytest.raises(ValueError, match=setting):
        prepare_corpus([clip], cfg, tmp_path / "cache", corpus="ravdess", workers=1, progress=False)
    assert not (tmp_path / "cache").exists()


def test_a_systematic_error_stops_the_run_early_and_is_tried_again_next_time(tmp_path):
    """A wrong setting fails every clip with the same exception: the run stops as soon as more than half
    have failed, and no verdict is kept (it is not the files' fault)."""
    clips = [
        Clip(f"take{k}", write_wav(tmp_path / f"take{k}.wav", voice("anger", 1, k)), "actor_01", "anger")
        for k in range(3)
    ]
    cfg = audio_cfg()
    cfg["mfcc"]["representation"] = "cqt"
    reason = "  2 x mfcc: ValueError: representation must be '…' or '…', got '…'"
    with pytest.raises(TooManyFailuresError, match=re.escape(reason)):
        prepare_corpus(clips, cfg, tmp_path / "cache", corpus="ravdess", workers=1, progress=False)
    (folder,) = (tmp_path / "cache" / "ravdess").iterdir()
    report = json.loads((folder / "report.json").read_text())
    assert report["files"] == {
        "found": 3,
        "prepared": 0,
        "dropped": 2,
        "excluded": 0,
        "skipped": 0,
        "other_files": 0,
        "not_reached": 1,
    }
    assert sorted(path.name for path in folder.iterdir()) == ["preprocess.json", "report.json"]
