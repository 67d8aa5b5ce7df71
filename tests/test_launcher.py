"""Folds as cluster jobs: a multirun over fold= through the submitit launcher and the fold=summary step,
one clip cache filled by two prepare.py runs at once, and log lines a cluster job can be read by."""
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar

from audio_trees import make_ravdess_speech
from runner.stage import build_callbacks
from callbacks.progress import EpochLines
from tracking.results_table import read_results
from conftest import REPO, TINY_MODELS, compose_train
from datamodules.clips import PAPER_EMOTIONS
from runner.loop import MissingFoldsError, run
from test_sweeps import clean_environ, run_checked

# two folds of the tiny demo corpus (18 clips), one stage, two short epochs
TWO_FOLDS = [
    *TINY_MODELS, "cv=kfold", "cv.folds.k=2", "cv.folds.val_fraction=0.3", "stage=audio", "logger=csv",
    "model.audio.trainer.max_epochs=2", "callbacks.progress_bar={_target_:callbacks.progress.progress_bar}",
]


@pytest.mark.slow
def test_folds_as_submitit_jobs_summarise_as_one_cross_validation(tiny_demo, tmp_path):
    jobs, single = tmp_path / "jobs", tmp_path / "single"
    argv = [sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", *tiny_demo, *TWO_FOLDS,
            f"paths.output_dir={jobs}", "fold=0,1"]
    run_checked(argv, clean_environ())
    run_dir = jobs / "demo" / "kfold"
    assert sorted(p.name for p in (run_dir / "audio").iterdir()) == ["fold_0", "fold_1"]  # the plain run folder
    logs = sorted((jobs / "_hydra" / "multirun").glob("*/*/.submitit/*/*_log.out"))
    assert len(logs) == 2  # each fold ran in its own submitit process, whose stdout is a file
    for log in logs:
        assert re.search(r"^stage audio fold [01] epoch 2/2: train loss \d\.\d{3}, .*val video acc \d\.\d{3} \| \d+ s$",
                         log.read_text(), re.MULTILINE), log.read_text()[-2000:]

    gathered = run(compose_train([*tiny_demo, *TWO_FOLDS, f"paths.output_dir={jobs}", "fold=summary"]))["audio"]
    whole = run(compose_train([*tiny_demo, *TWO_FOLDS, f"paths.output_dir={single}", "fold=all"]))["audio"]
    summary = json.loads((run_dir / "audio" / "summary.json").read_text())
    assert summary == gathered == whole  # every fold's val and test metrics, their means, the pooled matrices
    assert summary["test"]["mean"]["video_accuracy"] == pytest.approx(
        sum(row["video_accuracy"] for row in summary["test"]["folds"]) / 2
    )
    for name in ("fold_accuracy.png", "pooled_video_confusion.png", "pooled_segment_confusion.png"):
        assert (run_dir / "audio" / name).is_file()
    (row,) = read_results(run_dir / "results.csv")
    assert row["tag"] == "" and row["n_folds"] == "2" and float(row["objective_mean"]) == pytest.approx(
        summary["objective"]["mean"], abs=1e-4)

    (run_dir / "audio" / "fold_1" / "metrics.json").unlink()
    with pytest.raises(MissingFoldsError, match=r"fold\(s\) 1 of 2 have no metrics.json") as error:
        run(compose_train([*tiny_demo, *TWO_FOLDS, f"paths.output_dir={jobs}", "fold=summary"]))
    assert "python train.py -m stage=audio fold=1" in str(error.value)


def prepare_command(root: Path, cache: Path, workers: int) -> list[str]:
    """``python prepare.py`` of the RAVDESS-layout corpus at ``root`` into ``cache``, with ``workers`` processes."""
    return [sys.executable, "prepare.py", "experiment=paper_ravdess_kfold", f"data.root={root}", f"paths.cache_dir={cache}",
            f"data.preprocess_workers={workers}", "vad_plots=0"]


def processed_now(output: str) -> int:
    """How many clips one prepare.py run prepared itself (its report's ``processed now``)."""
    return int(re.search(r"(\d+) processed now", output).group(1))


@pytest.mark.slow
def test_two_prepare_runs_at_once_fill_one_cache_as_a_single_run_does(tmp_path):
    root = tmp_path / "corpus"
    make_ravdess_speech(root, actors=range(1, 3), emotions=PAPER_EMOTIONS, takes=2)
    (root / "Actor_01" / "03-01-05-02-02-02-01.wav").touch()  # a bad clip: its verdict is cached too
    together = [
        subprocess.Popen(prepare_command(root, tmp_path / "shared", workers), cwd=REPO, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for workers in (1, 2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in together]
    assert [process.returncode for process in together] == [0, 0], outputs
    alone = subprocess.run(prepare_command(root, tmp_path / "alone", 1), cwd=REPO, text=True, capture_output=True)
    assert alone.returncode == 0, alone.stdout + alone.stderr

    (shared,) = (tmp_path / "shared" / "ravdess").iterdir()
    (single,) = (tmp_path / "alone" / "ravdess").iterdir()
    entries = sorted(p.name for p in single.iterdir() if p.name not in ("report.json", "preprocess.json"))
    prepared = [name for name in entries if name.endswith(".pt")]  # the rest: verdicts of dropped clips
    assert len(entries) == 25 and len(prepared) >= 20 and "03-01-05-02-02-02-01.dropped.json" in entries
    assert sorted(p.name for p in shared.iterdir() if p.name not in ("report.json", "preprocess.json")) == entries
    for name in entries:  # no half-written file, lock or temporary file is left
        if name.endswith(".pt"):
            ours, theirs = torch.load(shared / name), torch.load(single / name)
            assert ours["meta"] == theirs["meta"] and set(ours) == set(theirs)
            assert all(torch.equal(ours[key], theirs[key]) for key in ours if key != "meta"), name
        else:
            assert json.loads((shared / name).read_text()) == json.loads((single / name).read_text())
    assert sum(processed_now(output) for output in outputs) == len(prepared), outputs  # each clip once, by one run
    for output in outputs:
        assert f"{len(prepared)} prepared of 25 indexed" in output  # each run reports the whole corpus
    lines = [line for output in outputs for line in output.splitlines() if line.startswith("prepare ravdess: ")]
    assert lines and all(re.fullmatch(r"prepare ravdess: (waiting for \d+ clip\(s\) that another run is preparing|\d+/\d+ clips, \d+ s)",
                                      line) for line in lines), lines


class Stdout(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.mark.parametrize("terminal", [True, False])
def test_the_progress_bar_is_a_plain_line_per_epoch_when_stdout_is_not_a_terminal(monkeypatch, terminal):
    monkeypatch.setattr(sys, "stdout", Stdout(terminal))
    context = {"dirpath": "/tmp/ckpt", "out_dir": "/tmp/out", "stage": "audio", "fold": 3, "test_subjects": ["s1"]}
    callbacks = build_callbacks(compose_train([]).callbacks, context, has_logger=False)
    (bar,) = [c for c in callbacks if isinstance(c, (RichProgressBar, EpochLines))]
    assert isinstance(bar, RichProgressBar if terminal else EpochLines)
    if not terminal:
        metrics = {"train/loss_epoch": torch.tensor(1.5), "train/loss_step": torch.tensor(9.0),
                   "train/acc": torch.tensor(0.25), "val/loss": torch.tensor(1.25), "val/video_acc": torch.tensor(0.5)}
        trainer = SimpleNamespace(callback_metrics=metrics, max_epochs=15, current_epoch=2)
        assert re.fullmatch(r"stage audio fold 3 epoch 3/15: train loss 1\.500, train acc 0\.250, val loss 1\.250, "
                            r"val video acc 0\.500 \| \d+ s", bar.epoch_line(trainer))
