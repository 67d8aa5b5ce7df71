"""W&B sweep specs (configs/sweeps/*.yaml) and the two ways of sweeping: a W&B agent and Hydra multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args
from wandb.sdk.lib.config_util import save_config_file_from_dict

from callbacks.fold_accuracy import cv_objective_key
from callbacks.results_table import read_results
from callbacks.wandb_offline import find_offline_runs, read_offline_run
from lightning_modules.cross_validation import STAGES, run

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
COMMAND = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
SPEC_KEYS = {
    "program",
    "method",
    "metric",
    "parameters",
    "command",
    "name",
    "description",
    "early_terminate",
    "run_cap",
}
DISTRIBUTIONS = {
    "uniform",
    "log_uniform_values",
    "q_uniform",
    "q_log_uniform_values",
    "int_uniform",
    "normal",
    "log_normal",
    "categorical",
    "constant",
}
TINY_AUDIO = {"model.audio.module.backbone.fc_dim": 32, "model.audio.trainer.max_epochs": 1}


def load_spec(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def sample_values(spec: dict) -> list:
    """Values to try for one parameter: its value, all its values, or the ends of its distribution."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    return [spec["min"], spec["max"]]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


def agent_argv(spec: dict, args: dict, python: str) -> list[str]:
    """The command line ``wandb agent`` runs for ``args``: its own macro expansion (wandb_agent._command_run)."""
    sweep_vars = create_sweep_command_args({"args": {name: {"value": value} for name, value in args.items()}})
    sweep_vars.update(interpreter=[python], program=[spec["program"]], env=["/usr/bin/env"])
    argv: list[str] = []
    for chunk in create_sweep_command(list(spec["command"])):
        chunk = str(chunk)
        argv += sweep_vars.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return argv


def clean_environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "AVER_AGENT_"))}
    return {**environ, "WANDB_MODE": "offline", **extra}


def run_checked(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def test_there_is_a_sweep_for_the_fusion_stage_and_each_extractor():
    assert {load_spec(path)["parameters"]["stage"]["value"] for path in SWEEPS} == set(STAGES)


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_spec_is_a_cross_validated_wandb_sweep_over_real_config_keys(path):
    spec = load_spec(path)
    assert set(spec) <= SPEC_KEYS, f"unknown keys {set(spec) - SPEC_KEYS}"
    assert spec["program"] == "train.py" and (REPO / spec["program"]).is_file()
    assert spec["command"] == COMMAND
    assert spec["method"] in ("grid", "random", "bayes")
    parameters = spec["parameters"]
    # the objective is the validation objective the runs select checkpoints on, never a test metric
    first_values = {name: {"value": sample_values(p)[0]} for name, p in parameters.items()}
    cfg = compose_train(create_sweep_command_args({"args": first_values})["args_no_hyphens"])
    assert spec["metric"]["name"] == cv_objective_key(cfg.objective.metric)
    assert spec["metric"]["name"].startswith("cv/val/") and "test" not in spec["metric"]["name"]
    assert spec["metric"]["goal"] == {"max": "maximize", "min": "minimize"}[cfg.objective.mode]
    assert parameters["fold"] == {"value": "all"}, "the objective is the cross-validated mean, never one fold"
    stage = parameters["stage"]["value"]
    searched = [name for name, p in parameters.items() if "value" not in p]
    assert len(searched) >= 4 and all(name.startswith(f"model.{stage}.") for name in searched)
    for name, p in parameters.items():
        assert ("value" in p) + ("values" in p) + ("distribution" in p) == 1, name
        if "distribution" in p:
            assert p["distribution"] in DISTRIBUTIONS and p["min"] < p["max"], name
    # every value, formatted by W&B's own ${args_no_hyphens}, is a Hydra override of an existing key
    base = {name: sample_values(p)[0] for name, p in parameters.items()}
    for name, p in parameters.items():
        for value in sample_values(p):
            args = {k: {"value": v} for k, v in {**base, name: value}.items()}
            cfg = compose_train(create_sweep_command_args({"args": args})["args_no_hyphens"])
            if name == "experiment":
                continue
            got = OmegaConf.select(cfg, name)
            got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            if name.startswith("paths."):
                assert got == OmegaConf.select(cfg, "paths.output_dir") + "/demo/loso"
            else:
                assert got == value, f"{name}={value!r} composed to {got!r}"


def test_an_agent_run_of_one_fold_is_refused(monkeypatch):
    for name, value in {
        "WANDB_SWEEP_ID": "swp1",
        "WANDB_RUN_ID": "r1",
        "AVER_AGENT_WANDB_SWEEP_ID": "",
        "AVER_AGENT_WANDB_RUN_ID": "",
    }.items():
        monkeypatch.setenv(name, value)  # monkeypatch restores (or removes) each of them afterwards
    with pytest.raises(ValueError, match=r"under wandb agent .* fold=all .*\(got fold=0"):
        run(compose_train(["fold=0"]))


@pytest.mark.slow
def test_an_agent_run_is_a_cross_validation_whose_summary_run_is_the_agents_run(tiny_demo, tmp_path):
    spec = load_spec(REPO / "configs" / "sweeps" / "audio.yaml")
    args = {name: sample_values(p)[0] for name, p in spec["parameters"].items()}
    args["model.audio.module.lr"] = 0.002
    extra = dict(item.split("=", 1) for item in tiny_demo)  # the test corpus, passed the way the agent passes args
    args.update({**extra, **TINY_AUDIO, "paths.output_dir": str(tmp_path)})
    argv = agent_argv(spec, args, sys.executable)
    assert argv[:3] == ["/usr/bin/env", sys.executable, "train.py"] and "model.audio.module.lr=0.002" in argv
    # what `wandb agent` puts in the environment of the command it starts
    params = tmp_path / "sweep-swp123" / "config-agentrun1.yaml"
    save_config_file_from_dict(str(params), {name: {"value": value} for name, value in args.items()})
    agent_env = {"WANDB_SWEEP_ID": "swp123", "WANDB_RUN_ID": "agentrun1", "WANDB_SWEEP_PARAM_PATH": str(params)}
    run_checked(argv, clean_environ(**agent_env))

    run_dir = tmp_path / "demo" / "loso" / "sweep-swp123" / "agentrun1" / "audio"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [row["fold"] for row in summary["test"]["folds"]] == [0, 1, 2]
    (agent_run,) = [read_offline_run(p) for p in find_offline_runs(run_dir / "wandb")]
    assert agent_run.run_id == "agentrun1" and agent_run.job_type == "cv-summary"
    assert agent_run.summary[spec["metric"]["name"]] == pytest.approx(summary["val"]["mean"]["video_uar"])
    assert agent_run.summary[spec["metric"]["name"]] == pytest.approx(summary["objective"]["mean"])
    assert agent_run.config["model.audio.module.lr"] == 0.002  # the sweep's parameters, as W&B loads them
    assert agent_run.config["model"]["audio"]["module"]["lr"] == 0.002
    fold_runs = [read_offline_run(p) for k in range(3) for p in find_offline_runs(run_dir / f"fold_{k}" / "wandb")]
    assert len(fold_runs) == 3 and "agentrun1" not in {r.run_id for r in fold_runs}
    assert {r.group for r in fold_runs} == {agent_run.group} == {"demo-loso-demo-sweep-swp123-agentrun1"}
    (row,) = read_results(tmp_path / "demo" / "loso" / "results.csv")
    assert row["tag"] == "sweep-swp123/agentrun1" and "model.audio.module.lr=0.002" in row["overrides"]


@pytest.mark.slow
def test_hydra_multirun_jobs_get_their_own_folders_and_one_results_table(tiny_demo, tmp_path):
    argv = [
        sys.executable,
        "train.py",
        "-m",
        *tiny_demo,
        f"paths.output_dir={tmp_path}",
        "logger=csv",
        "stage=audio",
        "fold=all",
        *(f"{k}={v}" for k, v in TINY_AUDIO.items()),
        "model.audio.module.lr=0.003,0.0003",
    ]
    result = run_checked(argv, clean_environ())
    rows = read_results(tmp_path / "demo" / "loso" / "results.csv")
    assert len(rows) == 2 and len({row["tag"] for row in rows}) == 2
    assert sorted(row["tag"].rsplit("/", 1)[1] for row in rows) == ["0", "1"]
    for row in rows:
        lr = "0.003" if row["tag"].endswith("/0") else "0.0003"
        assert f"model.audio.module.lr={lr}" in row["overrides"]
        config = yaml.safe_load((Path(row["run_dir"]) / "audio" / "fold_0" / "config.yaml").read_text())
        assert config["model"]["audio"]["module"]["lr"] == float(lr) and config["tag"] == row["tag"]
        assert (Path(row["run_dir"]) / "audio" / "summary.json").exists()
    assert "model.audio.module.lr=0.0003" in result.stdout  # the table is printed
