"""predict.py with a small trained run: outputs on real recordings, the fold ensemble, the fallbacks of a
fusion run, a broken file among good ones, and mistakes told in one line."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from runner.command_line import ConfigError
from runner.expected_errors import one_line_errors
from runner.loop import run
from runner.prediction import predict
from tests.helpers.configs import TINY_MODELS, compose_train
from tests.helpers.paths import REPO


def compose_predict(overrides: list[str]):
    """configs/predict.yaml composed with ``overrides``, as ``python predict.py <overrides>`` would."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("predict", overrides=overrides)


@pytest.fixture(scope="module")
def trained_run(tiny_demo, tmp_path_factory) -> Path:
    """A run of the small demo corpus: audio, visual and fusion on folds 0 and 1, two training batches each."""
    out = tmp_path_factory.mktemp("predict_run")
    one_epoch = [f"model.{stage}.trainer.max_epochs=1" for stage in ("audio", "visual", "fusion")]
    common = [
        *tiny_demo,
        *TINY_MODELS,
        *one_epoch,
        f"paths.output_dir={out}",
        "logger=none",
        "stage=all",
        "+trainer.limit_train_batches=2",
        "callbacks.confusion_matrix=null",
        "callbacks.fold_accuracy=null",
    ]
    for fold in (0, 1):
        run(compose_train([*common, f"fold={fold}"]))
    return out / "demo" / "loso"


@pytest.fixture(scope="module")
def demo_clips(tiny_demo) -> list[Path]:
    """Two generated demo clips (a face and a voice each, about 2 s)."""
    data = Path(compose_train(tiny_demo).paths.data_dir) / "demo"
    return sorted(data.rglob("*.mp4"))[:2]


def predicted(input_path: Path, run_dir: Path, out: Path, *overrides: str) -> dict:
    """predictions.json of ``predict.py input=<input_path> run=<run_dir> out=<out> <overrides>``."""
    return predict(compose_predict([f"input={input_path}", f"run={run_dir}", f"out={out}", *overrides]))


def check_outputs(out: Path, report: dict) -> None:
    """predictions.json and .csv agree, probabilities sum to 1, segments lie in their file, attention weights
    sum to 1, and each file has its timeline PNG."""
    classes = report["class_names"]
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(1 + entry["n_segments"] for entry in report["files"])
    for row in rows:
        assert sum(float(row[f"p_{c}"]) for c in classes) == pytest.approx(1.0, abs=1e-3)
        if row["attn_audio"]:
            assert float(row["attn_audio"]) + float(row["attn_visual"]) == pytest.approx(1.0, abs=1e-3)
    for entry in report["files"]:
        assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert entry["label"] in classes and len(entry["segments"]) == entry["n_segments"] > 0
        for segment in entry["segments"]:
            assert 0 <= segment["start_s"] < segment["end_s"] <= entry["duration_s"] + 1e-3
            assert sum(segment["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
            assert (segment["attention"] is not None) == (segment["source"] == "fusion")
            if segment["attention"]:
                assert sum(segment["attention"].values()) == pytest.approx(1.0, abs=1e-3)
        with Image.open(out / entry["timeline"]) as image:
            assert image.format == "PNG" and image.width > 500


def predict_py(args: list[str]) -> subprocess.CompletedProcess:
    """``python predict.py <args>`` from the repository root."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    return subprocess.run(
        [sys.executable, "predict.py", *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_predict_py_on_the_real_av_clip_with_every_folds_fusion_model(trained_run, ravdess_av_clip, tmp_path):
    result = predict_py([f"input={ravdess_av_clip}", f"run={trained_run}", f"out={tmp_path}"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "predictions.json").read_text())
    check_outputs(tmp_path, report)
    assert report["stage"] == "fusion" and report["folds"] == [0, 1] and report["failed"] == []
    (entry,) = report["files"]
    assert f"{ravdess_av_clip.name}: {entry['label']} (confidence {entry['confidence']:.2f}, " in result.stdout
    assert entry["name"] == ravdess_av_clip.name and entry["duration_s"] == pytest.approx(4.0, abs=0.05)
    assert entry["face_detection_rate"] > 0.9, "a real face in every frame"
    start, end = entry["speech_span_s"]
    assert 0 < start < end < entry["duration_s"]
    assert all(start - 1e-3 <= s["start_s"] and s["end_s"] <= end + 1e-3 for s in entry["segments"])
    assert entry["sources"] == {"fusion": entry["n_segments"]}
    assert sum(entry["attention"].values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_speech_file_to_a_fusion_run_falls_back_to_the_audio_model(trained_run, ravdess_speech_root, tmp_path):
    speech = ravdess_speech_root / "Actor_01" / "03-01-05-01-01-01-01.flac"
    report = predicted(speech, trained_run, tmp_path / "fusion")
    check_outputs(tmp_path / "fusion", report)
    (entry,) = report["files"]
    assert entry["sources"] == {"audio_only": entry["n_segments"]}
    assert entry["attention"] is None and entry["face_detection_rate"] is None
    audio = predicted(speech, trained_run, tmp_path / "audio", "stage=audio")
    check_outputs(tmp_path / "audio", audio)
    assert audio["stage"] == "audio" and audio["files"][0]["sources"] == {"audio": entry["n_segments"]}
    assert audio["files"][0]["probabilities"] == entry["probabilities"], "the same audio networks"


@pytest.mark.slow
def test_fold_ensemble_is_the_mean_of_the_folds(trained_run, demo_clips, tmp_path):
    one_fold = [predicted(demo_clips[0], trained_run, tmp_path / f"fold_{k}", f"fold={k}") for k in (0, 1)]
    both = predicted(demo_clips[0], trained_run, tmp_path / "all")
    assert [report["folds"] for report in one_fold] == [[0], [1]]
    for row, segment in enumerate(both["files"][0]["segments"]):
        alone = [report["files"][0]["segments"][row] for report in one_fold]
        assert {s["source"] for s in alone} == {segment["source"]}
        for name, p in segment["probabilities"].items():
            assert p == pytest.approx(np.mean([s["probabilities"][name] for s in alone]), abs=2e-4)


@pytest.mark.slow
def test_folder_with_a_broken_file_predicts_the_others(trained_run, demo_clips, tmp_path):
    folder = tmp_path / "recordings"
    (folder / "day 2").mkdir(parents=True)
    shutil.copy(demo_clips[0], folder / demo_clips[0].name)
    shutil.copy(demo_clips[1], folder / "day 2" / demo_clips[1].name)
    (folder / "day 2" / "notes.mp4").write_text("not a video, just notes about take 3\n")
    (folder / "readme.txt").write_text("ignored: not a media file by its name\n")
    report = predicted(folder, trained_run, tmp_path / "out", "fold=0", "prefetch=2")
    check_outputs(tmp_path / "out", report)
    names = sorted(entry["name"] for entry in report["files"])
    assert names == sorted([demo_clips[0].name, f"day 2/{demo_clips[1].name}"])
    (failure,) = report["failed"]
    assert failure["path"] == str(folder / "day 2" / "notes.mp4") and failure["step"] == "decode"
    assert failure["reason"].startswith("not a media file")
    assert (tmp_path / "out" / "day 2" / f"{demo_clips[1].name}.png").is_file()


def strip_audio(source: Path, target: Path) -> None:
    """``target``: the video stream of ``source`` alone, copied packet by packet."""
    with av.open(str(source)) as reader, av.open(str(target), "w") as writer:
        video = writer.add_stream_from_template(reader.streams.video[0])
        for packet in reader.demux(reader.streams.video[0]):
            if packet.dts is not None:
                packet.stream = video
                writer.mux(packet)


@pytest.mark.slow
def test_video_without_audio_uses_the_visual_model(trained_run, demo_clips, tmp_path):
    silent = tmp_path / "silent.mp4"
    strip_audio(demo_clips[0], silent)
    report = predicted(silent, trained_run, tmp_path / "out", "fold=1")
    check_outputs(tmp_path / "out", report)
    (entry,) = report["files"]
    assert entry["sources"] == {"visual_only": entry["n_segments"]} and entry["speech_span_s"] is None
    audio = predicted(silent, trained_run, tmp_path / "audio", "stage=audio", "fold=1")
    assert audio["files"] == [] and "no audio stream" in audio["failed"][0]["reason"]


def test_stage_and_fold_mismatches_name_what_the_run_holds(trained_run, tmp_path):
    audio_only_run = tmp_path / "audio_run"
    audio_only_run.mkdir()
    (audio_only_run / "audio").symlink_to(trained_run / "audio", target_is_directory=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        (audio_only_run, "stage=fusion"): f"stage=fusion: run={audio_only_run} has no fusion model; the run holds "
        "audio (folds 0, 1); try: python predict.py",
        (trained_run, "fold=3"): f"fold=3: the fusion model of run={trained_run} has folds 0, 1, or fold=all",
        (tmp_path / "nothing", "fold=all"): f"run={tmp_path / 'nothing'}: no such folder",
        (tmp_path, "fold=all"): f"run={tmp_path} is not a run folder itself; the runs under it: {audio_only_run} "
        "(audio (folds 0, 1)); try: python predict.py",
        (empty, "fold=all"): f"run={empty} holds no trained model",
    }
    for (run_dir, override), message in cases.items():
        with pytest.raises(ConfigError) as error:
            predicted(REPO / "README.md", run_dir, tmp_path / "out", override)
        assert str(error.value).startswith(message)


def test_extractors_retrained_after_the_fusion_model_are_refused(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    with open(copy / "audio" / "fold_0" / "checkpoints" / "best.ckpt", "ab") as checkpoint:
        checkpoint.write(b"retrained")
    with pytest.raises(ConfigError, match="fusion model of fold 0 was trained on the features of other"):
        predicted(REPO / "README.md", copy, tmp_path / "out", "fold=0")


def test_mistakes_are_one_line_on_the_terminal(tmp_path, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cfg = compose_predict([f"input={tmp_path / 'absent.mp4'}", "run=outputs/demo/loso"])
    with pytest.raises(SystemExit) as stop, one_line_errors():
        predict(cfg)
    assert stop.value.code == (
        f"error: input={tmp_path / 'absent.mp4'}: no such file or folder; give a media file (.mp4, .avi, .mkv, "
        f".flv, .webm, .mov, .wav, .flac, .mp3, .m4a), a folder (searched recursively) or a .txt file listing "
        f"paths; try: python predict.py input=clip.mp4"
    )
