"""A key no object reads (mistyped, appended with ``+``, left over from another config) stops ``train.py`` in one
line with the nearest existing key and a command that works, before anything is prepared or written; every
shipped experiment passes the check."""

from __future__ import annotations

import shutil

import pytest

from runner.command_line import ConfigError
from runner.unread_keys import check_overrides
from tests.helpers.paths import REPO
from tests.helpers.processes import failing_train_py, one_line

CONFIGS = REPO / "configs"
EXPERIMENTS = sorted(path.stem for path in (CONFIGS / "experiment").glob("*.yaml"))


@pytest.fixture
def folders(tmp_path) -> list[str]:
    return [
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "logger=none",
    ]


CASES = {
    "mistyped key": (
        ["data=ravdess", "model.audio.lr=1e-3"],
        "error: model.audio.lr=1e-3: no such key; did you mean model.audio.module.lr?; "
        "try: python train.py data=ravdess experiment=ravdess_audio model.audio.module.lr=1e-3 paths.",
    ),
    "appended key": (
        ["data=ravdess", "+model.audio.lr=1e-3"],
        "error: +model.audio.lr=1e-3: nothing reads model.audio.lr (model.audio holds module, batch_size, "
        "trainer); did you mean model.audio.module.lr?; "
        "try: python train.py data=ravdess experiment=ravdess_audio model.audio.module.lr=1e-3 paths.",
    ),
    "appended key under a target": (
        ["stage=audio", "+model.audio.module.lrr=1e-3"],
        "error: model.audio.module.lrr: lightning_modules.audio_module.AudioModule takes no lrr (it takes backbone, ",
    ),
    "left-over key": (
        ["stage=audio", "cv=holdout", "cv.test_subjects=[s01]", "+cv.folds.k=3"],
        "error: cv.folds.k: datamodules.splits.holdout_folds takes no k (it takes ",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_an_unread_key_stops_before_any_work(case, folders, tmp_path):
    args, expected = CASES[case]
    line = one_line(failing_train_py([*args, *folders]))
    assert line.startswith(expected), line
    for folder in ("data", "cache"):
        assert not (tmp_path / folder).exists(), f"{folder} was made"
    assert not [p for p in (tmp_path / "outputs").rglob("*") if "_hydra" not in p.parts]


def test_a_key_an_experiment_leaves_for_another_choice_is_named(tmp_path):
    check_overrides(["experiment=ck_visual", "cv=holdout", "cv.test_subjects=[s010]"], CONFIGS)
    configs = shutil.copytree(CONFIGS, tmp_path / "configs")
    (configs / "experiment" / "kfold3.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /cv: kfold\ncv:\n  folds:\n    k: 3\n"
    )
    check_overrides(["experiment=kfold3"], configs)
    with pytest.raises(
        ConfigError,
        match=r"^cv.folds.k: datamodules.splits.holdout_folds \(cv.folds._target_\) takes "
        r"no k; .*try: python train.py experiment=kfold3 cv=holdout ~cv.folds.k$",
    ):
        check_overrides(["experiment=kfold3", "cv=holdout"], configs)
    with pytest.raises(
        ConfigError,
        match=r"^cv.folds.k: datamodules.splits.holdout_folds takes no k \(it takes .*\); "
        r"try: python train.py cv=holdout$",
    ):
        check_overrides(["cv=holdout", "++cv.folds.k=3"], CONFIGS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("extra", [[], ["cv=holdout"], ["cv=cross_corpus", "+test_data=emodb"], ["stage=baseline"]])
def test_every_experiment_passes(experiment, extra):
    check_overrides([f"experiment={experiment}", *extra], CONFIGS)


def test_appended_settings_that_are_read_pass():
    check_overrides(
        [
            "+trainer.limit_train_batches=2",
            "++objective.metric=val/loss",
            "++model.audio.module.spec_augment.freq_masks=2",
            "++data.generator.subjects=3",
            "+data.preprocess.mfcc.mean_norm=true",
        ],
        CONFIGS,
    )
    check_overrides(["experiment=ck_visual", "+model.visual.module.face_augment.erase=0.5"], CONFIGS)
    check_overrides(["data=rml", "+data.indexer.extensions=[.mp4]"], CONFIGS)
    with pytest.raises(
        ConfigError, match=r"^data.indexer.extensions: datamodules.corpora.demo.index takes no extensions"
    ):
        check_overrides(["+data.indexer.extensions=[.mp4]"], CONFIGS)


def test_prepare_takes_the_same_command_line():
    check_overrides(["experiment=ravdess_audio", "vad_plots=0"], CONFIGS, config_name="prepare", program="prepare.py")
    with pytest.raises(ConfigError, match=r"try: python prepare.py experiment=ravdess_audio model.audio.module.lr=1$"):
        check_overrides(
            ["experiment=ravdess_audio", "model.audio.lr=1"], CONFIGS, config_name="prepare", program="prepare.py"
        )
