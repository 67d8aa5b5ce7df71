"""``python train.py data=<corpus>`` runs the corpus's own experiment (configs/corpus_experiments.yaml)."""

from __future__ import annotations

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


# corpora described by a table, a file-name pattern or folders: no recipe of their own, the user's settings
GENERIC_CORPORA = {"folder", "manifest", "pattern", "multi"}


def test_every_listed_experiment_trains_its_own_corpus():
    listed = OmegaConf.to_container(OmegaConf.load(CONFIGS / CORPUS_EXPERIMENTS))
    data_configs = {path.stem for path in (CONFIGS / "data").glob("*.yaml")}
    assert set(listed) == data_configs - GENERIC_CORPORA
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
