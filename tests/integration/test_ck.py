"""CK+: the indexer on generated trees of the distribution's layout and of CK+48's, image sequences prepared
into face segments (rule 3 for a sequence shorter than a segment), the HOG + LBP baseline, and the real CK+48."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.clips import CorpusLayoutError
from datamodules.corpora import ck
from datamodules.decode import BadInputError, decode_frames
from datamodules.face_features import HogLbp
from datamodules.preprocess import check_failure_settings, frame_segments, load_clip
from runner.command_line import ConfigError
from runner.loop import run
from tests.helpers.configs import compose_train
from tests.helpers.face_trees import face_image, make_ck48, make_ck_distribution, write_frame

DISTRIBUTION = {
    (5, 1): ("disgust", 12),
    (5, 2): (None, 4),  # unlabelled: left out
    (10, 1): ("happiness", 40),
    (10, 3): ("contempt", 6),  # not a paper class
    (11, 2): ("surprise", 8),
}


def files_under(root: Path) -> int:
    return sum(1 for path in root.rglob("*") if path.is_file())


def test_distribution_layout_gives_one_clip_per_labelled_sequence(tmp_path):
    make_ck_distribution(tmp_path, DISTRIBUTION)
    result = ck.index(tmp_path)
    assert [(c.clip_id, c.subject, c.label) for c in result.clips] == [
        ("S005_001", "S005", "disgust"),
        ("S010_001", "S010", "happiness"),
        ("S011_002", "S011", "surprise"),
    ]
    frames = result.clips[1].extra["frames"]
    assert len(frames) == 40 and list(frames) == sorted(frames) and result.clips[1].path == frames[-1]
    assert sorted(rule for _, rule in result.excluded) == [
        "class contempt not in classes",
        "unlabelled sequence (no S###_###_*_emotion.txt)",
    ]
    assert result.files_found == files_under(tmp_path) and result.skipped == []
    assert result.other_files == 8  # the labels and FACS files of four labelled sequences


def test_distribution_with_neutral_and_contempt_and_the_apex_frames_only(tmp_path):
    make_ck_distribution(tmp_path, DISTRIBUTION)
    classes = ("neutral", "anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise")
    result = ck.index(tmp_path, classes=classes, last_frames=3)
    labels = Counter(clip.label for clip in result.clips)
    assert labels == {"neutral": 4, "contempt": 1, "disgust": 1, "happiness": 1, "surprise": 1}
    neutral = next(clip for clip in result.clips if clip.clip_id == "S010_001_neutral")
    assert neutral.extra["frames"] == (neutral.path,) and neutral.path.stem == "S010_001_00000001"
    assert all(len(clip.extra["frames"]) == 3 for clip in result.clips if clip.label != "neutral")
    assert result.files_found == files_under(tmp_path)


def test_a_label_file_without_a_code_is_noted_and_its_sequence_left_out(tmp_path):
    make_ck_distribution(tmp_path, DISTRIBUTION)
    label = next((tmp_path / "Emotion" / "S011" / "002").glob("*_emotion.txt"))
    label.write_text("   9.0000000e+00\n")
    result = ck.index(tmp_path)
    assert "S011_002" not in {clip.clip_id for clip in result.clips}
    assert any("label 9 is not one of the codes 0-7" in note for note in result.notes)


def test_ck48_layout_and_its_misplaced_files(tmp_path):
    make_ck48(tmp_path, range(1, 4), ("anger", "contempt", "happiness"))
    write_frame(tmp_path / "anger" / "S001_001_frame.png", face_image("anger", 1, 1))
    write_frame(tmp_path / "smiles" / "S002_009_00000001.png", face_image("anger", 1, 1))
    (tmp_path / "README.txt").write_text("CK+48")
    result = ck.index(tmp_path)
    assert Counter(clip.label for clip in result.clips) == {"anger": 3, "happiness": 3}
    assert {clip.clip_id for clip in result.clips} >= {"S001_001", "S003_003"}
    assert all(len(clip.extra["frames"]) == 3 for clip in result.clips)
    assert [Path(path).name for path, _ in result.skipped] == ["S001_001_frame.png", "S002_009_00000001.png"]
    assert "neither an emotion" in result.skipped[1][1] and len(result.excluded) == 3
    assert result.files_found == files_under(tmp_path) and result.further_frames == 18
    with pytest.raises(CorpusLayoutError, match="S###_###_########"):
        ck.index(tmp_path, on_error="raise")


def test_image_sequences_decode_grey_to_three_channels_and_name_a_broken_frame(tmp_path):
    paths = [write_frame(tmp_path / f"f{i}.png", face_image("fear", 2, i, size=40)) for i in range(3)]
    decoded = decode_frames(paths, frame_rate=30)
    assert decoded.frames.shape == (3, 40, 40, 3) and decoded.audio.size == 0
    assert np.array_equal(decoded.frames[..., 0], decoded.frames[..., 2])
    np.testing.assert_allclose(decoded.frame_times, [0, 1 / 30, 2 / 30])
    assert decoded.duration_s == pytest.approx(0.1)
    (tmp_path / "f1.png").write_text("not a png at all")
    with pytest.raises(BadInputError, match="f1.png: not an image"):
        decode_frames(paths, frame_rate=30)


def ck_overrides(root: Path, base: Path) -> list[str]:
    return [
        "experiment=ck_visual",
        f"data.root={root}",
        f"paths.cache_dir={base / 'cache'}",
        f"paths.output_dir={base / 'outputs'}",
        "logger=none",
        "data.preprocess_workers=1",
        "callbacks.progress_bar=null",
    ]


def test_sequences_become_face_segments_without_audio(tmp_path):
    make_ck_distribution(tmp_path / "ck", {(5, 1): ("disgust", 3), (10, 1): ("happiness", 40)}, size=32)
    by_time = [
        "data.preprocess.sequence_segments=time",
        "data.preprocess.faces.frames_per_segment=20",
        "data.indexer.last_frames=null",
    ]
    cfg = compose_train([*ck_overrides(tmp_path / "ck", tmp_path), *by_time])
    datamodule = instantiate(cfg.data)
    report = datamodule.prepare_data().report
    assert report["files"]["further_frames"] == 2 + 39 and report["face_detection_rate"] == 1.0
    short = load_clip(datamodule.cache_folder / "S005_001.pt")
    # rule 3: three frames shorter than a segment -> one segment, first and last frames repeated, the first first
    assert "audio" not in short and short["segment_times"].shape == (1, 2)
    assert short["face_index"].tolist() == [[0] * 10 + [1] + [2] * 9]
    assert short["face_frames"].shape == (3, 3, 48, 48)
    assert torch.equal(short["face_frames"][:, 0], short["face_frames"][:, 1])  # grey -> 3 channels
    long = load_clip(datamodule.cache_folder / "S010_001.pt")  # 40 frames at 30 fps: 1.33 s
    assert long["segment_times"].shape == (3, 2) and long["meta"]["vad_found"] is None
    np.testing.assert_allclose(long["segment_times"][:, 0], [0.0, 0.3, 0.6], atol=1e-6)
    datamodule.setup()
    assert len(datamodule.dataset(["S005_001", "S010_001"], inputs=("faces",))) == 4


def test_frame_segments_make_each_frame_of_a_sequence_its_own_segment(tmp_path):
    make_ck_distribution(tmp_path / "ck", {(5, 1): ("disgust", 3), (10, 1): ("happiness", 40)}, size=32)
    # the recipe: the last 3 frames of each sequence, each its own segment of 1 frame
    cfg = compose_train(ck_overrides(tmp_path / "ck", tmp_path))
    assert cfg.data.preprocess.sequence_segments == "frame" and cfg.data.indexer.last_frames == 3
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    for clip_id, n_frames in (("S005_001", 3), ("S010_001", 3)):
        clip = load_clip(datamodule.cache_folder / f"{clip_id}.pt")
        assert clip["face_index"].tolist() == [[frame] for frame in range(n_frames)]
        assert clip["face_frames"].shape == (n_frames, 3, 48, 48) and clip["meta"]["n_segments"] == n_frames
        starts, ends = clip["segment_times"].unbind(1)
        frame_times = torch.arange(n_frames) / 30
        assert bool(((starts < frame_times) & (frame_times < ends)).all()) and torch.allclose(starts[1:], ends[:-1])
    datamodule.setup()
    assert len(datamodule.dataset(["S005_001", "S010_001"], inputs=("faces",))) == 6


def test_frame_segments_of_uneven_and_single_frames():
    times = np.array([0.0, 0.1, 0.3])
    np.testing.assert_allclose(frame_segments(times).numpy(), [[-0.05, 0.05], [0.05, 0.2], [0.2, 0.4]], atol=1e-6)
    np.testing.assert_allclose(frame_segments(np.array([2.0])).numpy(), [[1.5, 2.5]])


def test_frame_segments_need_every_frame_decoded():
    cfg = compose_train(["experiment=ck_visual", "data.preprocess.faces.frames_decoded=segments"])
    with pytest.raises(ValueError, match="sequence_segments=frame .* needs faces.frames_decoded=all"):
        check_failure_settings(OmegaConf.to_container(cfg.data.preprocess, resolve=True))


def test_stages_that_need_audio_are_refused_on_ck(tmp_path):
    make_ck48(tmp_path / "ck", range(1, 3), ("anger",))
    for stage in ("audio", "all", "fusion"):
        with pytest.raises(ConfigError, match=r"data=ck has no audio .* try: python train.py .*stage=visual"):
            run(compose_train([*ck_overrides(tmp_path / "ck", tmp_path), f"stage={stage}"]))


def test_the_ck_visual_recipe_trains_a_face_cnn_on_subject_folds(tmp_path):
    make_ck48(tmp_path / "ck", range(1, 10), ("anger", "disgust", "happiness", "surprise"))
    overrides = [
        *ck_overrides(tmp_path / "ck", tmp_path),
        "stage=visual",
        "fold=0",
        "cv.folds.k=3",
        "model.visual.trainer.max_epochs=2",
    ]
    cfg = compose_train(overrides)
    assert cfg.model.visual.module.backbone._target_.endswith("FaceCNN") and cfg.model.visual.module.temporal == "mean"
    summary = run(cfg)["visual"]
    assert len(summary["test"]["folds"]) == 1 and 0.0 <= summary["test"]["mean"]["video_accuracy"] <= 1.0
    checkpoint = torch.load(
        next((tmp_path / "outputs").rglob("visual/fold_0/checkpoints/best.ckpt")), weights_only=False
    )
    assert checkpoint["hyper_parameters"]["backbone"]["_target_"].endswith("FaceCNN")
    assert not any("lstm" in key for key in checkpoint["state_dict"])


def test_hog_lbp_describes_the_last_face_crops_of_a_clip():
    extractor = HogLbp()
    face = face_image("anger", 1, 1)[0].numpy()
    vector = extractor.frame_vector(face)
    hog_values, lbp_bins = 5 * 5 * 2 * 2 * 9, 4 * 4 * 59
    assert vector.shape == (hog_values + lbp_bins,)
    np.testing.assert_allclose(vector[hog_values:].reshape(16, 59).sum(1), 1.0, rtol=1e-6)
    assert not np.allclose(vector, extractor.frame_vector(face_image("surprise", 1, 1)[0].numpy()))


def test_hog_lbp_baseline_on_subject_folds_of_a_generated_ck48(tmp_path):
    labels = ("anger", "disgust", "happiness", "surprise")
    make_ck48(tmp_path / "ck", range(1, 10), labels)
    overrides = [*ck_overrides(tmp_path / "ck", tmp_path), "stage=baseline", "fold=all", "cv.folds.k=3"]
    summary = run(compose_train(overrides))["baseline"]
    assert summary["stage"] == "baseline-hog_lbp" and len(summary["test"]["folds"]) == 3
    assert summary["test"]["mean"]["video_accuracy"] > 0.8  # chance is 1/4
    assert len(list((tmp_path / "cache" / "utterance_features" / "ck").glob("*/*.pt"))) == 36


def test_real_ck48_gives_260_sequences_of_90_subjects_in_10_subject_folds(ck48_root, tmp_path):
    result = ck.index(ck48_root)
    assert len(result.clips) == 260 and result.files_found == 780 and not result.skipped
    assert Counter(clip.label for clip in result.clips) == {
        "anger": 35,
        "disgust": 55,
        "fear": 18,
        "happiness": 60,
        "sadness": 17,
        "surprise": 75,
    }
    cfg = compose_train(ck_overrides(ck48_root, tmp_path))
    folds = instantiate(cfg.cv.folds)(result.clips)
    subject_of = {clip.clip_id: clip.subject for clip in result.clips}
    tested = [subject_of[clip_id] for fold in folds for clip_id in fold.test]
    assert len(folds) == 10 and len(set(tested)) == 90 and len(tested) == 260
    for fold in folds:
        assert {subject_of[c] for c in fold.val}.isdisjoint(fold.test_subjects) and fold.val
