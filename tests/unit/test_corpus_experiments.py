"""``python train.py data=<corpus>`` runs the corpus's own experiment (configs/corpus_experiments.yaml)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from runner.command_line import CORPUS_EXPERIMENTS, corpus_experiment, with_corpus_experiment
from tests.helpers.configs import compose_train
from tests.helpers.paths import REPO

CONFIGS = REPO / "configs"


def test_a_corpus_alone_gets_its_experiment_among_the_overrides(capsys):
    args = ["-m", "data=ravdess", "stage=audio", "--cfg", "job"]
    assert with_corpus_experiment(args, CONFIGS) == [
        "-m",
        "data=ravdess",
        "experiment=ravdess_audio",
        "stage=audio",
        "--cfg",
        "job",
    ]
    assert "data=ravdess: experiment=ravdess_audio, the corpus's recipe" in capsys.readouterr().out


def test_an_experiment_a_sweep_over_corpora_or_no_corpus_are_left_as_given():
    for args in (
        ["data=ravdess", "experiment=paper_ravdess_kfold"],
        ["+experiment=demo", "data=ck"],
        ["-m", "data=ravdess,emodb"],
        ["stage=audio"],
        ["data=demo_like_corpus_not_listed"],
    ):
        assert corpus_experiment(args, CONFIGS) is None
        assert with_corpus_experiment(args, CONFIGS) == args


def test_every_listed_experiment_trains_its_own_corpus():
    listed = OmegaConf.to_container(OmegaConf.load(CONFIGS / CORPUS_EXPERIMENTS))
    assert set(listed) == {path.stem for path in (CONFIGS / "data").glob("*.yaml")}
    for corpus, experiment in listed.items():
        assert (CONFIGS / "experiment" / f"{experiment}.yaml").is_file()
        cfg = compose_train(with_corpus_experiment([f"data={corpus}"], CONFIGS))
        assert cfg.data.name == corpus, f"experiment={experiment} trains data={cfg.data.name}, not {corpus}"


def test_ravdess_alone_is_the_audio_recipe_and_emodb_asks_for_its_root():
    ravdess = compose_train(with_corpus_experiment(["data=ravdess"], CONFIGS))
    assert ravdess.model.audio.module.backbone._target_.endswith("StatsPoolTDNN") and ravdess.cv.folds.k == 5
    emodb = compose_train(with_corpus_experiment(["data=emodb"], CONFIGS))
    assert emodb.model.audio.module.backbone._target_.endswith("StatsPoolTDNN") and emodb.cv.name == "loso"
    assert emodb.data.root is None and emodb.data.preprocess.mfcc.window == 64


def test_prepare_fills_the_cache_that_training_reads(generated_ravdess, tmp_path):
    """``prepare.py`` takes train.py's command line: ``data=ravdess`` prepares ravdess_audio's log-mel images, and
    train.py with the same arguments finds them ready instead of preparing again."""
    args = [
        "data=ravdess",
        f"data.root={generated_ravdess}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path / 'outputs'}",
        "logger=none",
        "data.num_workers=0",
        "data.preprocess.mfcc.window=64",
    ]  # the generated utterances are shorter than the recipe's 1.93 s
    prepared = subprocess.run(
        [sys.executable, "prepare.py", *args, "vad_plots=0"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    (folder,) = re.findall(r"^cache: (\S+) \(report.json there\)$", prepared.stdout, re.MULTILINE)
    assert json.loads((Path(folder) / "preprocess.json").read_text())["mfcc"]["representation"] == "logmel"
    n_clips = json.loads((Path(folder) / "report.json").read_text())["clips_prepared"]
    training = [
        *args,
        "stage=audio",
        "fold=0",
        "cv.k=2",
        "model.audio.trainer.max_epochs=1",
        "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1",
        "callbacks.progress_bar=null",
        "model.audio.module.backbone.channels=8",
        "model.audio.module.backbone.fc_dim=8",
    ]
    trained = subprocess.run(
        [sys.executable, "train.py", *training], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert f"cache ready: {folder} ({n_clips} clips)\n" in trained.stdout
    assert "processed now" not in trained.stdout
    assert [p for p in (tmp_path / "cache").glob("*/*") if p.is_dir()] == [Path(folder)]
