"""The table across corpora and languages (docs/results.md "URDU, and across corpora") in one command:

    python scripts/across_corpora.py run [ROW ...] [KEY=VALUE ...]   # train the rows not finished yet, then table
    python scripts/across_corpora.py table            # outputs/across_corpora.md from the rows' summary.json
    python scripts/across_corpora.py list             # the rows and their train.py commands

Four comparisons on RAVDESS speech (``<shared data>/ravdess-speech-16k``) and URDU (``<shared data>/urdu``), four
classes (anger, happiness, neutral, sadness), seed 42:

* ``urdu``: URDU within the corpus, 5 folds of whole speakers (``experiment=urdu_audio``);
* ``ravdess_to_urdu`` and ``urdu_to_ravdess``: ``cv=cross_corpus``, trained and validated on one, tested on the other;
* ``loco``: RAVDESS + URDU with ``data=multi cv=leave_one_corpus_out``, one row per test corpus.

Each comparison has the recipe (``stage=audio``), the floor (``stage=baseline baseline=compare``: ComParE_2016 +
linear SVM on the same split) and the recipe with one switch: ``balance`` (``data.balance=classes``) and
``corpus_norm`` (``data.audio_norm=corpus``: statistics per corpus instead of per speaker); URDU within the corpus
also ``plus_ravdess`` (multi-corpus training: every RAVDESS clip added to each URDU fold's training part, with
``data=multi data.train_only=[ravdess]``) and ``short_zeros`` (short speech padded with silence instead of
repeated). The table marks, per comparison, the network row with the best validation objective: the switch that
validation would choose; test figures are reported, never used to choose.

Every row is ``python train.py <its overrides> seed=42 logger=csv tag=across_corpora_<row> [KEY=VALUE ...]`` (e.g.
``paths.shared_data=/data`` where the corpora lie elsewhere, ``trainer=gpu``); a row whose ``summary.json`` exists
is skipped by ``run`` (delete its folder to redo it; an interrupted row resumes).
URDU clips shorter than one 1.93-s window are padded by repeating the utterance (``data.preprocess.mfcc.short=
repeat``) in every row that reads URDU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lightning_modules.objective import SUMMARY_METRICS  # noqa: E402
from runner.summary import fold_wall_times  # noqa: E402

OUTPUTS = ROOT / "outputs"
TABLE_PATH = OUTPUTS / "across_corpora.md"
SEED = 42
CLASSES = "[anger,happiness,neutral,sadness]"
RAVDESS_ROOT = "${paths.shared_data}/ravdess-speech-16k"
URDU_ROOT = "${paths.shared_data}/urdu"
URDU_PATTERN = "'{label}/{subject}_F{take}_{code}.wav'"
URDU_LABELS = "{Angry: anger, Happy: happiness, Neutral: neutral, Sad: sadness}"


def urdu_corpus(key: str) -> list[str]:
    """URDU through ``data=pattern`` at config node ``key`` (``test_data``, ``data.corpora.urdu``)."""
    return [
        f"{key}.root={URDU_ROOT}",
        f"{key}.indexer.pattern={URDU_PATTERN}",
        f"{key}.indexer.label_map={URDU_LABELS}",
        f"{key}.classes={CLASSES}",
    ]


COMPARISONS: dict[str, tuple[str, list[str]]] = {
    "urdu": ("URDU, 5 folds by speaker", ["experiment=urdu_audio"]),
    "ravdess_to_urdu": (
        "RAVDESS -> URDU",
        [
            "experiment=ravdess_audio",
            "cv=cross_corpus",
            f"data.classes={CLASSES}",
            "data.preprocess.mfcc.short=repeat",
            "+test_data=pattern",
            "test_data.name=urdu",
            *urdu_corpus("test_data"),
        ],
    ),
    "urdu_to_ravdess": (
        "URDU -> RAVDESS",
        [
            "experiment=urdu_audio",
            "cv=cross_corpus",
            "+test_data=ravdess",
            f"test_data.root={RAVDESS_ROOT}",
            f"test_data.classes={CLASSES}",
        ],
    ),
    "loco": (
        "RAVDESS + URDU, leave one corpus out",
        [
            "experiment=ravdess_audio",
            "data=multi",
            "~data.root",  # the recipe's RAVDESS root: the members have their own
            "data.name=ravdess+urdu",
            "cv=leave_one_corpus_out",
            "data.preprocess.mfcc.short=repeat",
            "+data@data.corpora.ravdess=ravdess",
            f"data.corpora.ravdess.root={RAVDESS_ROOT}",
            f"data.corpora.ravdess.classes={CLASSES}",
            "+data@data.corpora.urdu=pattern",
            *urdu_corpus("data.corpora.urdu"),
        ],
    ),
}
MODELS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("audio", []),
    "floor": ("baseline", ["baseline=compare"]),
    "balance": ("audio", ["data.balance=classes"]),
    "corpus_norm": ("audio", ["data.audio_norm=corpus"]),
    # URDU only: RAVDESS added to every fold's training part (the same URDU folds, validated on URDU speakers)
    "plus_ravdess": (
        "audio",
        [
            "data=multi",
            "~data.root",
            "~data.indexer",
            "data.name=urdu+ravdess",
            "+data@data.corpora.urdu=pattern",
            *urdu_corpus("data.corpora.urdu"),
            "+data@data.corpora.ravdess=ravdess",
            f"data.corpora.ravdess.root={RAVDESS_ROOT}",
            f"data.corpora.ravdess.classes={CLASSES}",
            "data.train_only=[ravdess]",
        ],
    ),
    "short_zeros": ("audio", ["data.preprocess.mfcc.short=zeros"]),  # URDU only: silence instead of repetition
}
MODEL_NAMES = {
    "recipe": "`stage=audio` (the recipe)",
    "floor": "floor: ComParE + SVM",
    "balance": "recipe + `data.balance=classes`",
    "corpus_norm": "recipe + `data.audio_norm=corpus`",
    "plus_ravdess": "recipe + RAVDESS in training (`data.train_only=[ravdess]`)",
    "short_zeros": "recipe + `data.preprocess.mfcc.short=zeros`",
}
SWITCHES = ["recipe", "floor", "balance", "corpus_norm"]
MODELS_OF: dict[str, list[str]] = {comparison: SWITCHES for comparison in COMPARISONS} | {
    "urdu": [*SWITCHES, "plus_ravdess", "short_zeros"]
}


@dataclass(frozen=True)
class Row:
    comparison: str
    model: str

    @property
    def name(self) -> str:
        return f"{self.comparison}.{self.model}"

    @property
    def stage(self) -> str:
        return MODELS[self.model][0]

    @property
    def tag(self) -> str:
        return f"across_corpora_{self.comparison}_{self.model}"

    def overrides(self) -> list[str]:
        return [*COMPARISONS[self.comparison][1], f"stage={self.stage}", *MODELS[self.model][1], "fold=all"]

    def command(self, extra: Sequence[str] = ()) -> list[str]:
        return [sys.executable, "train.py", *self.overrides(), f"seed={SEED}", "logger=csv", f"tag={self.tag}", *extra]

    def summary_path(self) -> Path | None:
        """``<outputs>/<corpus>/<cv>/<tag>/<stage folder>/summary.json`` once the row has finished (a row's tag holds
        its one stage: ``audio``, or the floor's ``baseline-compare``)."""
        found = sorted(OUTPUTS.glob(f"*/*/{self.tag}/*/summary.json"))
        return found[0] if found else None


ROWS: dict[str, Row] = {row.name: row for row in (Row(c, m) for c in COMPARISONS for m in MODELS_OF[c])}


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class Line(NamedTuple):
    """One line of the table: a row's figures on one test corpus."""

    train_test: str
    model: str
    val: float
    uar: str
    accuracy: str
    per_fold: str
    wall: str


def table_lines(row: Row) -> list[Line]:
    """The lines of a finished row: one, or one per test corpus for leave-one-corpus-out, each with the validation
    objective of the folds that tested that corpus."""
    path = row.summary_path()
    if path is None:
        return []
    summary = json.loads(path.read_text())
    times = fold_wall_times(path.parent)
    wall = minutes(sum(times)) if times else "—"
    label = COMPARISONS[row.comparison][0]
    if len(summary["test"].get("per_corpus", [])) > 1:
        objective = SUMMARY_METRICS[summary["objective"]["metric"].partition("/")[2]]
        val_of = {fold["fold"]: fold[objective] for fold in summary["val"]["folds"]}
        return [
            Line(
                f"{label}: test {corpus['corpus']}",
                row.model,
                sum(val_of[k] for k in corpus["folds"]) / len(corpus["folds"]),
                f"{corpus['video_uar']:.3f}",
                f"{corpus['video_accuracy']:.3f}",
                "—",
                wall,
            )
            for corpus in summary["test"]["per_corpus"]
        ]
    folds = summary["test"]["folds"]
    mean, std = summary["test"]["mean"], summary["test"]["std"]
    several = len(folds) > 1

    def spread(metric: str) -> str:
        return f"{mean[metric]:.3f}" + (f" ± {std[metric]:.3f}" if several else "")

    per_fold = " ".join(f"{fold['video_uar']:.3f}" for fold in folds) if several else "—"
    val = summary["objective"]["mean"]
    return [Line(label, row.model, val, spread("video_uar"), spread("video_accuracy"), per_fold, wall)]


def write_table() -> Path:
    """The markdown table of every finished row; in bold, the network row that validation chooses for each test."""
    lines = [
        f"Seed {SEED}; test video UAR and accuracy (4 classes, chance 0.25); validation: the mean objective "
        "(val/video_uar) over the folds; **bold**: the network row that validation chooses for each test.",
        "",
        "| train -> test | model | validation UAR | test UAR | test accuracy | folds (UAR) | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    missing = []
    for comparison in COMPARISONS:
        rows = [ROWS[f"{comparison}.{model}"] for model in MODELS_OF[comparison]]
        finished = [line for row in rows for line in table_lines(row)]
        missing += [row.name for row in rows if row.summary_path() is None]
        for test in dict.fromkeys(line.train_test for line in finished):
            group = [line for line in finished if line.train_test == test]
            networks = [line for line in group if MODELS[line.model][0] == "audio"]
            chosen = max(networks, key=lambda line: line.val, default=None)
            for line in group:
                bold = "**" if line is chosen else ""
                lines.append(
                    f"| {line.train_test} | {bold}{MODEL_NAMES[line.model]}{bold} | {line.val:.3f} | {bold}{line.uar}{bold} "
                    f"| {line.accuracy} | {line.per_fold} | {line.wall} |"
                )
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)} (`python scripts/across_corpora.py run`)."]
    TABLE_PATH.parent.mkdir(parents=True, exist_ok=True)
    TABLE_PATH.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\n{TABLE_PATH}")
    return TABLE_PATH


def main(argv: list[str]) -> int:
    action = argv[0] if argv else "list"
    names = [arg for arg in argv[1:] if "=" not in arg]
    extra = [arg for arg in argv[1:] if "=" in arg]  # train.py overrides for every row
    unknown = [name for name in names if name not in ROWS and name not in COMPARISONS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows: {', '.join(ROWS)} (or a comparison: {', '.join(COMPARISONS)})")
    chosen = [row for row in ROWS.values() if not names or row.name in names or row.comparison in names]
    if action == "list":
        for row in chosen:
            print(f"{row.name}: python train.py {' '.join(row.command(extra)[2:])}")
    elif action == "run":
        for row in chosen:
            if row.summary_path() is not None:
                print(f"{row.name}: done ({row.summary_path()})")
                continue
            print("+", " ".join(row.command(extra)), flush=True)
            subprocess.run(row.command(extra), cwd=ROOT, check=True)
        write_table()
    elif action == "table":
        write_table()
    else:
        raise SystemExit(f"unknown action {action!r}: run, table or list")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
