"""scripts/across_corpora.py: every row's command composes and passes train.py's checks; the table marks the
network row that validation chooses and gives leave-one-corpus-out one line per test corpus."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from runner.unread_keys import check_overrides, compose
from tests.helpers.paths import REPO

SCRIPT = REPO / "scripts" / "across_corpora.py"


@pytest.fixture()
def across(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("across_corpora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "across_corpora", module)  # its dataclass looks its module up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUTPUTS", tmp_path)
    monkeypatch.setattr(module, "TABLE_PATH", tmp_path / "across_corpora.md")
    return module


def test_every_row_composes_with_its_own_tag_and_the_four_shared_classes(across, monkeypatch):
    monkeypatch.setenv("AVER_ROOT", str(REPO))
    tags = set()
    for row in across.ROWS.values():
        args = row.command()[2:]
        assert args[-3:] == ["seed=42", "logger=csv", f"tag={row.tag}"] and row.command()[0] == sys.executable
        check_overrides(args, REPO / "configs")
        cfg = compose(REPO / "configs", "train", args)
        tags.add(cfg.tag)
        assert cfg.stage == row.stage and cfg.fold == "all"
        classes = cfg.data.classes or cfg.data.corpora.urdu.classes
        assert list(classes) == ["anger", "happiness", "neutral", "sadness"]
        assert cfg.data.preprocess.mfcc.short == ("zeros" if row.model == "short_zeros" else "repeat")
        assert cfg.data.audio_norm == ("corpus" if row.model == "corpus_norm" else "speaker")
        assert cfg.data.balance == ("classes" if row.model == "balance" else "none")
        if row.model == "plus_ravdess":
            assert list(cfg.data.corpora) == ["urdu", "ravdess"] and cfg.data.train_only == ["ravdess"]
            assert cfg.cv.folds == compose(REPO / "configs", "train", across.ROWS["urdu.recipe"].overrides()).cv.folds
    assert len(tags) == len(across.ROWS) == 18


def _write_summary(folder: Path, val: float, uars: list[float], per_corpus: list[dict] | None = None) -> None:
    folder.mkdir(parents=True)
    folds = [{"fold": k, "video_uar": u, "video_accuracy": u} for k, u in enumerate(uars)]
    mean = sum(uars) / len(uars)
    test = {
        "folds": folds,
        "mean": {"video_uar": mean, "video_accuracy": mean},
        "std": {"video_uar": 0.1, "video_accuracy": 0.1},
    }
    if per_corpus:
        test["per_corpus"] = per_corpus
    val_folds = [{"fold": k, "video_uar": val + 0.1 * k} for k in range(len(uars))]
    summary = {"objective": {"metric": "val/video_uar", "mean": val}, "val": {"folds": val_folds}, "test": test}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_the_table_bolds_the_validation_choice_and_splits_leave_one_corpus_out_by_corpus(across, tmp_path):
    _write_summary(tmp_path / "urdu/kfold/across_corpora_urdu_recipe/audio", 0.70, [0.4, 0.5])
    _write_summary(tmp_path / "urdu/kfold/across_corpora_urdu_balance/audio", 0.80, [0.3, 0.4])
    _write_summary(tmp_path / "urdu/kfold/across_corpora_urdu_floor/baseline-compare", 0.90, [0.5, 0.6])
    per_corpus = [
        {"corpus": "ravdess", "folds": [0], "video_uar": 0.31, "video_accuracy": 0.32},
        {"corpus": "urdu", "folds": [1], "video_uar": 0.41, "video_accuracy": 0.42},
    ]
    _write_summary(
        tmp_path / "ravdess+urdu/leave_one_corpus_out/across_corpora_loco_recipe/audio", 0.6, [0.3, 0.4], per_corpus
    )
    lines = across.write_table().read_text().splitlines()
    urdu = [line for line in lines if line.startswith("| URDU, 5 folds")]
    assert len(urdu) == 3
    assert "**recipe + `data.balance=classes`** | 0.800 | **0.350 ± 0.100**" in urdu[2]  # chosen on validation
    assert "**" not in urdu[0] and "**" not in urdu[1]  # the floor is never the network choice
    assert "0.400 0.500" in urdu[0]
    loco = [line for line in lines if line.startswith("| RAVDESS + URDU")]
    assert [line.split(" | ")[0] for line in loco] == [
        "| RAVDESS + URDU, leave one corpus out: test ravdess",
        "| RAVDESS + URDU, leave one corpus out: test urdu",
    ]
    assert "| 0.600 | **0.310** | 0.320 |" in loco[0] and "| 0.700 | **0.410** | 0.420 |" in loco[1]  # each fold's own
    not_run = lines[-1].removeprefix("Not run yet: ").split(" (")[0].split(", ")
    assert "urdu.corpus_norm" in not_run and "ravdess_to_urdu.recipe" in not_run
    assert not {"urdu.recipe", "urdu.floor", "urdu.balance", "loco.recipe"} & set(not_run)
