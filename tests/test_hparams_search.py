"""Optuna searches (configs/hparams_search/*.yaml): cross-validated trials scored on validation subjects
only, one SQLite study per stage that a rerun resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState
from test_sweeps import TINY_AUDIO, clean_environ, run_checked

from callbacks.results_table import read_results
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from lightning_modules.cross_validation import STAGES

REPO = Path(__file__).resolve().parents[1]
SEARCHES = sorted((REPO / "configs" / "hparams_search").glob("*.yaml"))


def compose_search(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=[f"hparams_search={name}", *overrides], return_hydra_config=True)


def trial_values(distribution) -> list:
    """Values a trial can set: every choice, or the two ends of the interval."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


def test_there_is_a_search_for_the_fusion_stage_and_each_extractor():
    assert {compose_search(path.stem).stage for path in SEARCHES} == set(STAGES)


@pytest.mark.parametrize(("metric", "mode"), [("val/video_uar", "max"), ("val/loss", "min")])
@pytest.mark.parametrize("path", SEARCHES, ids=[p.stem for p in SEARCHES])
def test_search_is_a_stored_cross_validation_over_its_stage_config_keys(path, metric, mode):
    cfg = compose_search(path.stem, f"++objective.metric={metric}", f"++objective.mode={mode}")
    sweeper = cfg.hydra.sweeper
    assert cfg.fold == "all", "the objective is the cross-validated mean, never one fold"
    assert sweeper.direction == f"{mode}imize", "the study must optimise objective.mode"
    assert sweeper.storage == f"sqlite:///{cfg.paths.output_dir}/{cfg.data.name}/{cfg.cv.name}/optuna.db"
    assert cfg.stage in sweeper.study_name and metric in sweeper.study_name, "one study per stage and objective"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    distributions, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed and len(distributions) >= 4
    parser = OverridesParser.create()
    for name, distribution in distributions.items():
        assert name.startswith(f"model.{cfg.stage}."), f"{name} is not a parameter of stage {cfg.stage}"
        default = OmegaConf.select(cfg, name, default=KeyError)
        assert default is not KeyError, f"{name} is not a key of the config"
        default = OmegaConf.to_container(default) if OmegaConf.is_config(default) else default
        for value in trial_values(distribution):  # as the sweeper writes a trial's override
            assert type(parser.parse_override(f"{name}={value}").value()) is type(default), f"{name}={value}"
    if cfg.stage == "fusion":  # reads the extractors of the plain run, as configs/sweeps/fusion.yaml does
        assert cfg.paths.upstream_dir == f"{cfg.paths.output_dir}/{cfg.data.name}/{cfg.cv.name}"


@pytest.mark.slow
def test_a_search_scores_trials_on_validation_folds_and_resumes_its_study(tiny_demo, tmp_path):
    # One epoch leaves video UAR at chance (1/6) on validation and test alike; segment accuracy tells
    # them apart, so the study is scored on it to show which of the two a trial's value is.
    argv = [
        sys.executable,
        "train.py",
        "-m",
        "hparams_search=audio_optuna",
        "objective.metric=val/seg_acc",
        *tiny_demo,
        f"paths.output_dir={tmp_path}",
        "logger=csv",
        *(f"{k}={v}" for k, v in TINY_AUDIO.items()),
    ]
    storage = f"sqlite:///{tmp_path}/demo/loso/optuna.db"
    results = tmp_path / "demo" / "loso" / "results.csv"
    run_checked([*argv, "hydra.sweeper.n_trials=2"], clean_environ())
    study = optuna.load_study(study_name="audio-val/seg_acc", storage=storage)
    assert study.direction == StudyDirection.MAXIMIZE
    assert len(study.trials) == 2 and len(read_results(results)) == 2

    run_checked([*argv, "hydra.sweeper.n_trials=3"], clean_environ())  # resumes: n_trials counts them all
    study = optuna.load_study(study_name="audio-val/seg_acc", storage=storage)
    trials, rows = study.trials, read_results(results)
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 3 and len(rows) == 3
    assert trials[2].params != trials[0].params, "the resumed seeded sampler replayed the first trial"
    summaries = []
    for trial, row in zip(trials, rows):  # one trial after the other, as results.csv lists them
        assert {f"{name}={value}" for name, value in trial.params.items()} <= set(row["overrides"].split())
        summary = json.loads((Path(row["run_dir"]) / "audio" / "summary.json").read_text())
        assert summary["objective"]["metric"] == "val/seg_acc" and len(summary["val"]["folds"]) == 3
        assert trial.value == pytest.approx(summary["objective"]["mean"])
        assert trial.value == pytest.approx(summary["val"]["mean"]["segment_accuracy"])
        summaries.append(summary)
    assert any(s["val"]["mean"]["segment_accuracy"] != s["test"]["mean"]["segment_accuracy"] for s in summaries), (
        "validation and test agree on every trial: this run cannot tell which one the study scored"
    )
    assert study.best_value == pytest.approx(max(s["objective"]["mean"] for s in summaries))
