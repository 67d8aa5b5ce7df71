"""data=multi: several generated corpora (RAVDESS and EmoDB layouts) as one clip table; cv=leave_one_corpus_out
tests each corpus in turn, cv=cross_corpus tests several corpora, one fold and one per-corpus row each."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import WeightedRandomSampler

from datamodules.splits import assert_no_leakage
from runner.command_line import with_test_corpora
from runner.loop import run
from tests.helpers.configs import TINY_MODELS, compose_train
from tests.helpers.paths import REPO


@pytest.fixture(scope="module")
def multi(generated_ravdess, generated_emodb, tmp_path_factory) -> list[str]:
    base = tmp_path_factory.mktemp("multi_corpus")
    return [
        "data=multi",
        "+data@data.corpora.ravdess=ravdess",
        f"data.corpora.ravdess.root={generated_ravdess}",
        "+data@data.corpora.emodb=emodb",
        f"data.corpora.emodb.root={generated_emodb}",
        f"paths.cache_dir={base / 'cache'}",
        f"paths.output_dir={base / 'outputs'}",
        "logger=none",
    ]


def test_leave_one_corpus_out_folds_are_the_corpora(multi):
    cfg = compose_train([*multi, "cv=leave_one_corpus_out"])
    with pytest.warns(UserWarning, match=r"emodb lacks \['surprise'\]"):
        datamodule = instantiate(cfg.data, cv=instantiate(cfg.cv.folds))
    assert datamodule.classes == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    clips = datamodule.index().clips
    assert len(clips) == 4 * 6 * 4 + 3 * 5 * 3
    assert {clip.subject.partition("/")[0] for clip in clips} == {"ravdess", "emodb"}
    assert "emodb/speaker_03" in {clip.subject for clip in clips}
    corpus_of = {clip.clip_id: clip.subject.partition("/")[0] for clip in clips}
    subject_of = {clip.clip_id: clip.subject for clip in clips}
    assert [fold.test_corpus for fold in datamodule.folds] == ["ravdess", "emodb"]
    for fold in datamodule.folds:
        assert_no_leakage(fold, clips, by_subject=True)
        assert {corpus_of[c] for c in fold.test} == {fold.test_corpus}
        assert fold.test_corpus not in {corpus_of[c] for c in fold.train + fold.val}
        assert fold.val and not {subject_of[c] for c in fold.val} & {subject_of[c] for c in fold.train}
    assert {len(datamodule.folds[0].test), len(datamodule.folds[1].test)} == {96, 45}


def test_a_member_only_trained_on_joins_every_training_part_of_the_others_folds(multi):
    cfg = compose_train([*multi, "cv=kfold_by_subject", "cv.k=3", "data.train_only=[ravdess]"])
    with pytest.warns(UserWarning, match="emodb lacks"):
        datamodule = instantiate(cfg.data, cv=instantiate(cfg.cv.folds))
    clips = datamodule.index().clips
    ravdess = {clip.clip_id for clip in clips if clip.subject.startswith("ravdess/")}
    assert len(datamodule.folds) == 3 and len(ravdess) == 96
    for fold in datamodule.folds:
        assert_no_leakage(fold, clips, by_subject=True)
        assert ravdess <= set(fold.train) and not ravdess & set(fold.val + fold.test)
        assert fold.test_corpus == "emodb" and {s.partition("/")[0] for s in fold.test_subjects} == {"emodb"}
    assert sorted(c for fold in datamodule.folds for c in fold.test) == sorted(
        c.clip_id for c in clips if c.clip_id not in ravdess
    )
    with pytest.raises(Exception, match="must name some, not all, of the members"):
        instantiate(compose_train([*multi, "data.train_only=[iemocap]"]).data)


def test_each_member_keeps_its_own_cache(multi):
    cfg = compose_train([*multi, "cv=leave_one_corpus_out", "data.audio_norm=speaker"])
    datamodule = instantiate(cfg.data, cv=instantiate(cfg.cv.folds))
    datamodule.prepare_data()
    datamodule.setup()
    folders = {key: member.cache_folder for key, member in datamodule.corpora.items()}
    assert folders["ravdess"].parent.name == "ravdess" and folders["emodb"].parent.name == "emodb"
    assert all(any(folder.glob("*.pt")) for folder in folders.values())
    assert not datamodule.cache_folder.exists()  # the union has no files of its own
    # speaker statistics: one per <corpus>/<speaker>
    stats = {clip.subject: s for clip, s in zip(datamodule.clips, datamodule.audio_stats)}
    assert len(stats) == 4 + 3


def test_corpus_statistics_are_one_per_member_and_balance_draws_the_classes_evenly(multi):
    cfg = compose_train([*multi, "cv=leave_one_corpus_out", "data.audio_norm=corpus", "data.balance=classes"])
    datamodule = instantiate(cfg.data, cv=instantiate(cfg.cv.folds))
    datamodule.prepare_data()
    datamodule.setup()
    corpus_of = {clip.clip_id: clip.subject.partition("/")[0] for clip in datamodule.clips}
    stats = {corpus_of[clip.clip_id]: s for clip, s in zip(datamodule.clips, datamodule.audio_stats)}
    assert len({tuple(s.flatten().tolist()) for s in datamodule.audio_stats}) == 2 == len(stats)
    datamodule.fold = 1  # trained on the generated RAVDESS alone: its 6 classes
    loader = datamodule.train_dataloader()
    assert isinstance(loader.sampler, WeightedRandomSampler)
    labels = loader.dataset.segment_labels
    per_class = torch.zeros(len(datamodule.classes), dtype=torch.float64).index_add_(0, labels, loader.sampler.weights)
    assert torch.allclose(per_class, per_class[0].expand_as(per_class))  # every class drawn as often
    assert len(labels) == len(loader.dataset) == loader.sampler.num_samples


def test_prepare_py_reports_every_member_and_draws_its_vad_plots(multi):
    prepared = subprocess.run(
        [sys.executable, "prepare.py", *multi, "cv=leave_one_corpus_out", "vad_plots=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    folders = [Path(f) for f in re.findall(r"^cache: (\S+) \(report.json there\)$", prepared.stdout, re.MULTILINE)]
    assert [folder.parent.name for folder in folders] == ["ravdess", "emodb"]
    assert all(len(list((folder / "vad_plots").glob("*.png"))) == 2 for folder in folders)
    assert "VAD plots of 2 clips of emodb" in prepared.stdout


@pytest.mark.slow
def test_audio_stage_leave_one_corpus_out_writes_a_per_corpus_table(multi):
    cfg = compose_train(
        [
            *multi,
            *TINY_MODELS,
            "cv=leave_one_corpus_out",
            "stage=audio",
            "fold=all",
            "callbacks.progress_bar=null",
            "model.audio.trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=2",
        ]
    )
    run(cfg)
    summary = json.loads((Path(cfg.paths.run_dir) / "audio" / "summary.json").read_text())
    rows = {row["corpus"]: row for row in summary["test"]["per_corpus"]}
    assert set(rows) == {"ravdess", "emodb"}
    assert rows["ravdess"]["n_clips"] == 96 and rows["emodb"]["n_clips"] == 45
    assert rows["emodb"]["not_in_test"] == ["surprise"]
    assert (Path(cfg.paths.run_dir) / "audio" / "corpus_accuracy.png").is_file()
    with open(Path(cfg.paths.output_dir) / "multi" / "leave_one_corpus_out" / "results_per_corpus.csv") as handle:
        assert {row["test_corpus"] for row in csv.DictReader(handle)} == {"ravdess", "emodb"}


@pytest.mark.slow
def test_baseline_cross_corpus_to_two_test_corpora(generated_ravdess, generated_emodb, tmp_path):
    cfg = compose_train(
        [
            "data=emodb",
            f"data.root={generated_emodb}",
            "data.classes=[anger,sadness,fear,boredom]",
            "cv=cross_corpus",
            "+test_data=multi",
            "+data@test_data.corpora.ravdess=ravdess",
            f"test_data.corpora.ravdess.root={generated_ravdess}",
            "test_data.corpora.ravdess.classes=[anger,sadness,surprise]",
            "+data@test_data.corpora.ravdess2=ravdess",
            f"test_data.corpora.ravdess2.root={generated_ravdess}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.output_dir={tmp_path / 'outputs'}",
            "logger=none",
            "stage=baseline",
            "fold=all",
        ]
    )
    summary = run(cfg)["baseline"]
    rows = {row["corpus"]: row for row in summary["test"]["per_corpus"]}
    assert summary["class_names"] == ["anger", "sadness", "fear"]
    assert rows["ravdess"]["n_clips"] == 2 * 4 * 4 and rows["ravdess2"]["n_clips"] == 3 * 4 * 4
    assert rows["ravdess"]["not_in_test"] == ["fear"] and rows["ravdess"]["not_in_training"] == ["surprise"]
    assert rows["ravdess2"]["not_in_test"] == [] and "surprise" in rows["ravdess2"]["not_in_training"]
    results = Path(cfg.paths.output_dir) / "emodb" / "cross_corpus-multi" / "results_per_corpus.csv"
    with open(results) as handle:
        assert [row["test_corpus"] for row in csv.DictReader(handle)] == ["ravdess", "ravdess2"]


def test_a_list_of_test_corpora_is_written_out_as_the_several_test_corpora_of_multi(tmp_path):
    roots = ["test_data.corpora.emodb.root=/data/emodb", "test_data.corpora.ravdess.root=/data/ravdess"]
    short = with_test_corpora(["data=demo", "cv=cross_corpus", "+test_data=[emodb, ravdess]", *roots])
    long = [
        "data=demo",
        "cv=cross_corpus",
        "+test_data=multi",
        "test_data.name=emodb+ravdess",
        "+data@test_data.corpora.emodb=emodb",
        "+data@test_data.corpora.ravdess=ravdess",
        *roots,
    ]
    assert short == long
    assert with_test_corpora(["+test_data=emodb", "data.classes=[anger]"]) == [
        "+test_data=emodb",
        "data.classes=[anger]",
    ]


def test_prepare_py_takes_a_list_of_test_corpora(generated_ravdess, generated_emodb, tmp_path):
    prepared = subprocess.run(
        [
            sys.executable,
            "prepare.py",
            "data=emodb",
            f"data.root={generated_emodb}",
            "cv=cross_corpus",
            "+test_data=[ravdess]",
            f"test_data.corpora.ravdess.root={generated_ravdess}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "vad_plots=0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    assert "+test_data=[ravdess]: +test_data=multi test_data.name=ravdess +data@test_data.corpora.ravdess=ravdess" in (
        prepared.stdout
    )
    folders = [Path(f) for f in re.findall(r"^cache: (\S+) \(report.json there\)$", prepared.stdout, re.MULTILINE)]
    assert [folder.parent.name for folder in folders] == ["emodb", "ravdess"]
