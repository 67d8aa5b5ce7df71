"""Rerunning a command resumes it: a run killed with SIGKILL in the middle of a fold ends with the numbers of
an uninterrupted run, finished folds are not trained again, and the resumed fold keeps its W&B run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from runner.loop import run
from tests.helpers.configs import TINY_MODELS, compose_train
from tests.helpers.paths import REPO
from tests.helpers.processes import epochs_done, finish, train_py
from tracking.loggers import WANDB_ID_FILE
from tracking.wandb_offline import find_offline_runs, read_offline_run

EPOCHS = 6
KILL_AFTER_EPOCHS = 2  # of fold 1: the kill lands while it trains its third epoch or later
# every kind of state a resumed fold needs: Adam moments, a cosine schedule, SpecAugment and dropout draws
TRAIN = [
    *TINY_MODELS,
    "stage=audio",
    "fold=all",
    f"model.audio.trainer.max_epochs={EPOCHS}",
    "model.audio.module.lr=0.003",
    "model.audio.module.scheduler={_target_:lightning_modules.schedules.cosine,_partial_:true}",
    "model.audio.module.spec_augment={freq_masks:1,freq_width:8,time_masks:1,time_width:10}",
]
COMPARED = ("val", "test", "objective")  # metrics.json without its paths


def kill_during(process: subprocess.Popen, checkpoint: Path, epochs: int) -> None:
    """SIGKILL ``process`` as soon as ``checkpoint`` holds ``epochs`` epochs."""
    deadline = time.monotonic() + 600
    while epochs_done(checkpoint) < epochs:
        assert process.poll() is None, f"train.py ended before {checkpoint} had {epochs} epochs:\n{finish(process)}"
        assert time.monotonic() < deadline, f"{checkpoint} never reached {epochs} epochs"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()


def compared(fold_dir: Path) -> dict:
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    return {key: metrics[key] for key in COMPARED}


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_numbers_of_an_uninterrupted_one(tiny_demo, tmp_path):
    args = [*tiny_demo, *TRAIN]
    reference = tmp_path / "reference" / "demo" / "loso" / "audio"
    finish(train_py([*args, f"paths.output_dir={tmp_path / 'reference'}"]))

    command = [*args, f"paths.output_dir={tmp_path / 'killed'}"]
    stages = tmp_path / "killed" / "demo" / "loso" / "audio"
    kill_during(train_py(command), stages / "fold_1" / "checkpoints" / "last.ckpt", KILL_AFTER_EPOCHS)
    assert (stages / "fold_0" / "metrics.json").exists() and not (stages / "fold_1" / "metrics.json").exists()
    killed_at = epochs_done(stages / "fold_1" / "checkpoints" / "last.ckpt")
    assert KILL_AFTER_EPOCHS <= killed_at < EPOCHS, "the kill must land in the middle of fold 1's training"
    finished = {
        name: (stages / "fold_0" / name).stat().st_mtime_ns
        for name in ("metrics.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt")
    }

    output = finish(train_py(command))
    assert "demo/loso/audio/fold_0: finished (metrics.json, same config): skipped" in output
    assert f"demo/loso/audio/fold_1: resuming from checkpoints/last.ckpt ({killed_at} epochs done)" in output
    assert {name: (stages / "fold_0" / name).stat().st_mtime_ns for name in finished} == finished
    for fold in range(3):
        assert compared(stages / f"fold_{fold}") == compared(reference / f"fold_{fold}"), f"fold {fold} differs"
    summary, uninterrupted = (json.loads((d / "summary.json").read_text()) for d in (stages, reference))
    assert {k: summary[k] for k in COMPARED} == {k: uninterrupted[k] for k in COMPARED}

    # fold 1's W&B run went on under its id, offline: a run folder before the kill (what wandb had not flushed
    # when it was killed is lost) and one after it
    run_id = (stages / "fold_1" / WANDB_ID_FILE).read_text()
    before, after = find_offline_runs(stages / "fold_1" / "wandb")
    assert before.name.endswith(run_id) and after.name.endswith(run_id) and before.name < after.name
    resumed = read_offline_run(after)
    assert (resumed.run_id, resumed.name, resumed.exit_code) == (run_id, "fold_1", 0)
    assert len(find_offline_runs(stages / "fold_0" / "wandb")) == 1


@pytest.mark.slow
def test_each_seed_resumes_and_the_summaries_are_rebuilt_from_metrics_json(tiny_demo, tmp_path, capsys):
    common = [
        *tiny_demo,
        *TINY_MODELS,
        f"paths.output_dir={tmp_path}",
        "stage=audio",
        "fold=all",
        "seeds=[0,1]",
        "model.audio.trainer.max_epochs=2",
        "logger=none",
    ]
    run_dir = tmp_path / "demo" / "loso"

    def best_checkpoint_times() -> list[int]:
        return [
            (run_dir / f"seed_{s}" / "audio" / f"fold_{k}" / "checkpoints" / "best.ckpt").stat().st_mtime_ns
            for s in (0, 1)
            for k in range(3)
        ]

    first = run(compose_train(common))["audio"]
    trained = best_checkpoint_times()
    # as if killed after fold 2 of seed 1 had trained, before its metrics.json was written
    (run_dir / "seed_1" / "audio" / "fold_2" / "metrics.json").unlink()
    (run_dir / "audio" / "seeds_summary.json").unlink()
    capsys.readouterr()

    assert run(compose_train(common))["audio"] == first
    lines = capsys.readouterr().out
    for seed, fold in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        assert f"demo/loso/seed_{seed}/audio/fold_{fold}: finished (metrics.json, same config): skipped" in lines
    assert "demo/loso/seed_1/audio/fold_2: resuming from checkpoints/last.ckpt (2 epochs done)" in lines
    assert json.loads((run_dir / "audio" / "seeds_summary.json").read_text()) == first
    assert best_checkpoint_times() == trained

    run(compose_train([*common, "seeds=[1]", "fold=0", "model.audio.module.lr=0.002"]))
    assert (
        "demo/loso/seed_1/audio/fold_0: trained again: its config.yaml differs in model.audio.module.lr "
        "(resume=false always trains afresh)"
    ) in capsys.readouterr().out
    run(compose_train([*common, "seeds=[1]", "fold=0", "model.audio.module.lr=0.002", "resume=false"]))
    assert "fold_0:" not in capsys.readouterr().out  # trained afresh without a word


def cache_entries(cache: Path) -> dict[str, Path]:
    """The clip files of the one cache folder under ``cache`` (reports aside), by name."""
    (folder,) = (cache / "ravdess").iterdir()
    return {p.name: p for p in folder.iterdir() if p.name not in ("report.json", "preprocess.json")}


@pytest.mark.slow
def test_a_killed_prepare_reruns_only_the_missing_clips(tmp_path):
    from datamodules.clips import PAPER_EMOTIONS
    from tests.helpers.audio_trees import make_ravdess_speech
    from tests.helpers.processes import prepare_command, processed_now

    root = tmp_path / "corpus"
    make_ravdess_speech(root, actors=range(1, 4), emotions=PAPER_EMOTIONS, takes=4)  # 72 clips
    killed = subprocess.Popen(
        prepare_command(root, tmp_path / "killed", 1),
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / "killed" / "ravdess").is_dir() or len(list((tmp_path / "killed").glob("ravdess/*/*.pt"))) < 5:
        assert killed.poll() is None, f"prepare.py ended before it was killed:\n{killed.communicate()[0]}"
        assert time.monotonic() < deadline, "prepare.py prepared no clip in 300 s"
        time.sleep(0.01)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    done_before = len(list((tmp_path / "killed").glob("ravdess/*/*.pt")))
    assert 5 <= done_before < 72, "the kill did not land while clips were being prepared"

    rerun = subprocess.run(prepare_command(root, tmp_path / "killed", 1), cwd=REPO, text=True, capture_output=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert processed_now(rerun.stdout) == 72 - done_before  # only the missing clips
    clean = subprocess.run(prepare_command(root, tmp_path / "clean", 1), cwd=REPO, text=True, capture_output=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    resumed, fresh = cache_entries(tmp_path / "killed"), cache_entries(tmp_path / "clean")
    assert sorted(resumed) == sorted(fresh) and len(fresh) == 72  # no temporary, lock or partial file left
    for name, path in fresh.items():
        ours, theirs = torch.load(resumed[name]), torch.load(path)
        assert ours["meta"] == theirs["meta"] and all(torch.equal(ours[k], theirs[k]) for k in ours if k != "meta"), (
            name
        )
