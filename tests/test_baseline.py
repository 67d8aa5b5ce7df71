"""stage=baseline: utterance features (MFCC statistics, openSMILE), their per-clip cache, C chosen on
validation clips, and whole runs on a generated RAVDESS-layout corpus (LOSO and hold-out)."""

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from audio_trees import SAMPLE_RATE, voice, write_wav
from hydra.utils import instantiate
from test_train import compose_train

from datamodules.clips import Clip
from datamodules.decode import decode_clip
from datamodules.mfcc import mfcc_frames
from datamodules.utterance_features import MfccStats, OpenSmileFunctionals, cached_vectors, feature_folder
from datamodules.vad import trim_to_speech
from lightning_modules.baseline import choose_C, evaluate_clips, svm_pipeline
from lightning_modules.cross_validation import run

VAD = {
    "enabled": True,
    "window_ms": 30,
    "hop_ms": 10,
    "band": [100.0, 4000.0],
    "ratio_threshold": 0.6,
    "min_rel_energy_db": -30.0,
    "median_windows": 11,
    "pre_s": 0.25,
    "post_s": 0.25,
}


def corpus_with_vad(vad: dict) -> SimpleNamespace:
    """What an acoustic extractor reads of a corpus: its preprocessing's VAD config."""
    return SimpleNamespace(preprocess_cfg={"vad": vad})


def padded_voice(tmp_path: Path) -> tuple[Clip, np.ndarray]:
    """A generated utterance with a second of near-silence on both sides as a wav clip, and its decoded audio."""
    quiet = 1e-4 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)
    path = write_wav(tmp_path / "clip.wav", np.concatenate([quiet, voice("anger", 1, 0), quiet]))
    return Clip(clip_id=path.stem, path=path, subject="s1", label="anger"), decode_clip(path, with_video=False).audio


def test_mfcc_stats_are_mean_std_min_max_of_40_mfccs_and_the_std_of_their_deltas():
    audio = voice("sadness", 2, 1)
    vector = MfccStats()(audio)
    static, delta, _ = mfcc_frames(audio, SAMPLE_RATE, n_mfcc=40)
    assert vector.shape == (200,) and np.isfinite(vector).all()
    mean, std, low, high, delta_std = vector.reshape(5, 40)
    np.testing.assert_allclose(mean, static.mean(1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(delta_std, delta.std(1, correction=0).numpy(), rtol=1e-5, atol=1e-5)
    assert (low <= mean).all() and (mean <= high).all() and (std > 0).all()


def test_opensmile_egemaps_and_compare_functionals_run_here():
    audio = voice("fear", 3, 0)
    egemaps = OpenSmileFunctionals("eGeMAPSv02")
    compare = OpenSmileFunctionals("ComParE_2016")
    assert egemaps(audio).shape == (88,) and compare(audio).shape == (6373,)
    assert np.isfinite(egemaps(audio)).all()
    assert egemaps.identity()["opensmile"] and egemaps.identity() != compare.identity()


def test_a_clip_vector_describes_the_vad_span_only(tmp_path):
    clip, audio = padded_voice(tmp_path)
    extractor = MfccStats()
    speech, span, found = trim_to_speech(audio, SAMPLE_RATE, VAD)
    assert found and span[0] > 0.5 and len(speech) < len(audio) - SAMPLE_RATE
    np.testing.assert_allclose(
        extractor.clip_vector(clip, corpus_with_vad(VAD)), extractor(speech), rtol=1e-5, atol=1e-5
    )
    whole = extractor.clip_vector(clip, corpus_with_vad({**VAD, "enabled": False}))
    np.testing.assert_allclose(whole, extractor(audio), rtol=1e-5, atol=1e-5)
    assert not np.allclose(whole, extractor(speech), atol=1e-2)


def test_features_are_cached_per_clip_keyed_by_extractor_vad_and_root(tmp_path):
    clip, _ = padded_voice(tmp_path)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF but not audio")
    clips = [clip, Clip(clip_id="broken", path=broken, subject="s1", label="anger")]
    extractor = MfccStats()
    inputs = extractor.inputs(corpus_with_vad(VAD))
    assert inputs == {"vad": VAD}
    folder = feature_folder(tmp_path / "cache", "corpus", extractor, inputs, source=str(tmp_path))
    vector = partial(extractor.clip_vector, corpus=corpus_with_vad(VAD))
    vectors, dropped = cached_vectors(clips, vector, folder)
    assert list(vectors) == [clip.clip_id] and list(dropped) == ["broken"] and "broken.wav" in dropped["broken"]
    cached = folder / f"{clip.clip_id}.pt"
    written = cached.stat().st_mtime_ns
    again, _ = cached_vectors(clips, vector, folder)
    assert cached.stat().st_mtime_ns == written and np.array_equal(again[clip.clip_id], vectors[clip.clip_id])
    others = {
        feature_folder(tmp_path / "cache", "corpus", MfccStats(n_mfcc=20), inputs, source=str(tmp_path)),
        feature_folder(tmp_path / "cache", "corpus", extractor, {"vad": {**VAD, "pre_s": 0.5}}, source=str(tmp_path)),
        feature_folder(tmp_path / "cache", "corpus", extractor, inputs, source="/another/root"),
    }
    assert len(others) == 3 and folder not in others


@pytest.mark.parametrize("metric, mode", [("val/video_uar", "max"), ("val/loss", "min")])
def test_C_is_the_grid_value_with_the_best_validation_score(metric, mode):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 5))
    labels = np.repeat(np.arange(3), 20)
    features = centres[labels] + rng.normal(scale=1.5, size=(60, 5))
    train, val = (features[::2], labels[::2]), (features[1::2], labels[1::2])
    calibration = instantiate(
        {
            "_target_": "sklearn.calibration.CalibratedClassifierCV",
            "_partial_": True,
            "method": "sigmoid",
            "ensemble": False,
            "cv": 3,
        }
    )
    svm = instantiate({"_target_": "sklearn.svm.SVC", "kernel": "rbf"})
    grid = [1e-3, 0.1, 10.0]
    model, C, search = choose_C(
        lambda c: svm_pipeline(svm, calibration, c), grid, train, val, {"metric": metric, "mode": mode}, num_classes=3
    )
    scores = [row[metric] for row in search]
    assert [row["C"] for row in search] == grid
    assert C == grid[scores.index(max(scores) if mode == "max" else min(scores))]
    result = evaluate_clips(model, *val, num_classes=3)
    assert (
        result["n_segments"] == result["n_clips"] == 30 and result["segment"]["accuracy"] == result["video"]["accuracy"]
    )


def test_stage_names_baseline_among_the_choices():
    with pytest.raises(
        ValueError, match="stage=svm: no such stage; choose one of audio, visual, fusion, all, baseline"
    ):
        run(compose_train(["stage=svm"]))


@pytest.fixture(scope="module")
def ravdess_baseline(generated_ravdess, tmp_path_factory) -> list[str]:
    base = tmp_path_factory.mktemp("baseline")
    return [
        "data=ravdess",
        f"data.root={generated_ravdess}",
        f"paths.cache_dir={base / 'cache'}",
        f"paths.output_dir={base / 'outputs'}",
        "logger=none",
        "stage=baseline",
    ]


def test_C_is_never_chosen_without_validation_clips(ravdess_baseline):
    cfg = compose_train(
        [*ravdess_baseline, "cv=holdout", "cv.test_subjects=[actor_01]", "cv.folds.val_fraction=0", "fold=0"]
    )
    with pytest.raises(ValueError, match="no validation clips to choose C on"):
        run(cfg)


@pytest.mark.slow
def test_baseline_on_loso_folds_writes_the_deep_stages_files(ravdess_baseline):
    cfg = compose_train([*ravdess_baseline, "cv=loso", "fold=all"])
    summary = run(cfg)["baseline"]
    stage_dir = Path(cfg.paths.run_dir) / "baseline-mfcc_stats"
    assert summary["stage"] == "baseline-mfcc_stats" and len(summary["test"]["folds"]) == 4
    assert json.loads((stage_dir / "summary.json").read_text())["test"]["mean"] == summary["test"]["mean"]
    assert summary["test"]["mean"]["video_accuracy"] > 0.4  # chance is 1/6
    for fold in range(4):
        metrics = json.loads((stage_dir / f"fold_{fold}" / "metrics.json").read_text())
        assert metrics["test_subjects"] == [f"actor_{fold + 1:02d}"]
        assert metrics["val_subjects"] == [f"actor_{(fold + 1) % 4 + 1:02d}"]
        assert metrics["test"]["n_clips"] == metrics["test"]["n_segments"] == 24
        assert metrics["test"]["segment"]["accuracy"] == metrics["test"]["video"]["accuracy"]
        search = metrics["baseline"]["C_search"]
        assert [row["C"] for row in search] == list(cfg.model.baseline.C_grid)
        assert metrics["objective"]["value"] == max(row["val/video_uar"] for row in search)
        assert metrics["objective"]["value"] == metrics["val"]["video"]["uar"]
        assert json.loads((stage_dir / f"fold_{fold}" / "fold.json").read_text())["fold_hash"] == metrics["fold_hash"]
    results = (Path(cfg.paths.output_dir) / "ravdess" / "loso" / "results.csv").read_text()
    assert "baseline-mfcc_stats" in results
    assert len(list(Path(cfg.paths.cache_dir).glob("utterance_features/ravdess/*/*.pt"))) == 96


@pytest.mark.slow
def test_baseline_on_a_holdout_fold_of_named_subjects(ravdess_baseline):
    cfg = compose_train([*ravdess_baseline, "cv=holdout", "cv.test_subjects=[actor_03]", "fold=all"])
    (fold,) = run(cfg)["baseline"]["test"]["folds"]
    assert fold["subjects"] == ["actor_03"] and fold["n_clips"] == 24
    metrics = json.loads((Path(cfg.paths.run_dir) / "baseline-mfcc_stats" / "fold_0" / "metrics.json").read_text())
    assert metrics["cv"] == "holdout" and len(metrics["val_subjects"]) == 1
    assert metrics["val_subjects"][0] in {"actor_01", "actor_02", "actor_04"}
