"""experiment=urdu_audio: the URDU corpus (../shared/data/urdu) with no code, data=pattern over its file names, 5
folds of whole speakers, and the short-clip padding that keeps its clips; skipped where the corpus is absent."""

from collections import Counter

from hydra.utils import instantiate

from tests.helpers.configs import compose_train
from tests.helpers.paths import shared_path

FOUR = ["anger", "happiness", "neutral", "sadness"]


def urdu_datamodule(tmp_path, *overrides: str):
    root = shared_path("urdu")
    cfg = compose_train(["experiment=urdu_audio", f"paths.cache_dir={tmp_path / 'cache'}", *overrides])
    assert cfg.data.root.endswith("/urdu") and root.is_dir()
    return cfg, instantiate(cfg.data, cv=instantiate(cfg.cv.folds))


def test_urdu_audio_composes_and_indexes_the_real_corpus_in_five_folds_by_speaker(tmp_path):
    cfg, datamodule = urdu_datamodule(tmp_path)
    assert cfg.data.name == "urdu" and list(cfg.data.classes) == FOUR
    assert cfg.cv.k == 5 and cfg.cv.folds.group_by == "subject" and cfg.data.preprocess.mfcc.window == 192
    indexed = datamodule.index()
    assert len(indexed.clips) == 400 and indexed.skipped == [] and indexed.excluded == []
    assert Counter(clip.label for clip in indexed.clips) == dict.fromkeys(FOUR, 100)
    subjects = {clip.clip_id: clip.subject for clip in indexed.clips}
    assert len(set(subjects.values())) == 29
    folds = datamodule.folds
    assert len(folds) == 5
    assert sorted(clip_id for fold in folds for clip_id in fold.test) == sorted(subjects)  # each clip tested once
    for fold in folds:
        tested = {subjects[c] for c in fold.test}
        assert tested.isdisjoint(subjects[c] for c in [*fold.train, *fold.val])  # whole speakers per fold


def test_the_padding_keeps_at_least_nine_tenths_of_urdu(tmp_path):
    cfg, datamodule = urdu_datamodule(tmp_path, "data.preprocess_workers=1")
    assert cfg.data.preprocess.mfcc.short == "repeat"
    report = datamodule.prepare_data().report
    assert report["clips_prepared"] >= 0.9 * report["clips_indexed"] == 360
    assert report["clips_prepared"] == 400 and report["dropped"] == {}


def test_urdu_is_a_test_corpus_through_test_data_pattern(tmp_path):
    for corpus in ("urdu", "ravdess-speech-16k"):
        shared_path(corpus)  # skip with the reason where either is absent
    cfg = compose_train(
        [
            "experiment=ravdess_audio",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "cv=cross_corpus",
            f"data.classes=[{','.join(FOUR)}]",
            "data.preprocess.mfcc.short=repeat",
            "+test_data=pattern",
            "test_data.name=urdu",
            "test_data.root=${paths.shared_data}/urdu",
            "test_data.indexer.pattern='{label}/{subject}_F{take}_{code}.wav'",
            "test_data.indexer.label_map={Angry: anger, Happy: happiness, Neutral: neutral, Sad: sadness}",
            f"test_data.classes=[{','.join(FOUR)}]",
        ]
    )
    assert cfg.test_data.preprocess.mfcc == cfg.data.preprocess.mfcc and cfg.test_data.audio_norm == "speaker"
    datamodule = instantiate(cfg.data, cv=instantiate(cfg.cv.folds))
    (fold,) = datamodule.folds
    assert len(fold.test) == 400 and len(fold.train) + len(fold.val) == 560  # RAVDESS's clips of the four classes
