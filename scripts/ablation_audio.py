"""Ablation of the RAVDESS audio recipe (issue 10 §1): each row is a full 5-fold cross-validation.

    python scripts/ablation_audio.py run [ROW ...]    # train the rows not finished yet (all rows by default)
    python scripts/ablation_audio.py collect          # write outputs/ablation_audio.csv from their summary.json
    python scripts/ablation_audio.py list             # the rows and their overrides

Every row is `python train.py experiment=ravdess_audio stage=audio fold=all tag=ablation_<row> seed=42
logger=csv callbacks.progress_bar=null <overrides>`; its results are in
`outputs/ravdess/kfold/ablation_<row>/audio/summary.json`. `experiment=ravdess_audio` *is* the recipe, so
the "recipe" row has no overrides and the other rows switch parts of it off (or back to the old settings).
A row whose summary.json exists is skipped by `run` (delete its folder to redo it). Rows run one after the
other (one training at a time on a shared CPU machine). The CSV reports, per row, the validation objective
(mean over folds of val/video_uar: the only number used to choose) and the test metrics (mean and std over
folds), and the wall time per fold (from the fold folder's fold.json to its metrics.json: training,
validation and test; the first fold of a row also includes preparing the cache if it did not exist).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from runner.summary import fold_wall_times  # noqa: E402

RUN_ROOT = ROOT / "outputs" / "ravdess" / "kfold"
CSV_PATH = ROOT / "outputs" / "ablation_audio.csv"
SEED = 42
M = "model.audio.module"

# The VGG at CPU size that the rows before the TDNN recipe use (VGG11-BN, 1/4 width, fc 256, global pool).
VGG_CPU = [
    "audio_backbone=vgg",
    f"{M}.backbone.variant=vgg11",
    f"{M}.backbone.batch_norm=true",
    f"{M}.backbone.weights=none",
    f"{M}.backbone.width=0.25",
    f"{M}.backbone.fc_dim=256",
    f"{M}.backbone.dropout=0.3",
    f"{M}.backbone.pool=global",
]
# The first setting of experiment=ravdess_audio: VGG11-BN on the paper's MFCC images and windows, 7x7 pool,
# Adam 1e-3, 15 epochs, no augmentation, no normalisation but ImageNet's.
OLD_SETTING = VGG_CPU + [
    f"{M}.backbone.pool=7x7",
    f"{M}.spec_augment=null",
    f"{M}.mixup_alpha=0.0",
    f"{M}.label_smoothing=0.0",
    f"{M}.optimizer._target_=torch.optim.Adam",
    f"{M}.lr=1e-3",
    f"{M}.optimizer.weight_decay=0.0",
    f"{M}.scheduler=null",
    "model.audio.trainer.max_epochs=15",
    "callbacks.early_stopping.patience=5",
    "data.audio_norm=none",
    "data.preprocess.mfcc.representation=mfcc",
    "data.preprocess.mfcc.scale=segment",
    "data.preprocess.mfcc.window=64",
]

ROWS: dict[str, list[str]] = {
    "baseline": OLD_SETTING,
    # the paper's optimisation and network shape (VGG19 without BN, Adam 1e-4, batch 32, dropout 0.5,
    # no augmentation), from scratch and shrunk to CPU size (1/4 width, fc 1024)
    "paper_cpu": OLD_SETTING
    + [
        f"{M}.backbone.variant=vgg19",
        f"{M}.backbone.batch_norm=false",
        f"{M}.backbone.fc_dim=1024",
        f"{M}.backbone.dropout=0.5",
        f"{M}.head_dropout=0.5",
        f"{M}.lr=1e-4",
        "model.audio.batch_size=32",
    ],
    # the VGG recipe before the TDNN one: log-mel images of the paper's 64 frames, VGG11-BN, cosine over 8 epochs
    "recipe_vgg": VGG_CPU
    + [
        "data.audio_norm=none",
        "data.preprocess.mfcc.window=64",
        f"{M}.scheduler={{_target_:lightning_modules.schedules.cosine,_partial_:true}}",
        "model.audio.trainer.max_epochs=8",
        "callbacks.early_stopping.patience=8",
    ],
    "recipe": [],
    # the recipe with one part switched off or back to the paper's
    "no_speaker_norm": ["data.audio_norm=none"],
    "utterance_norm": ["data.audio_norm=utterance"],
    "window_64": ["data.preprocess.mfcc.window=64"],
    "vgg_backbone": VGG_CPU,
    "no_specaugment": [f"{M}.spec_augment=null"],
    "no_label_smoothing": [f"{M}.label_smoothing=0.0"],
    "no_weight_decay": [f"{M}.optimizer.weight_decay=0.0"],
    "mfcc_images": [
        "data.preprocess.mfcc.representation=mfcc",
        "data.preprocess.mfcc.scale=segment",
        f"{M}.backbone.rows=${{data.preprocess.mfcc.n_mfcc}}",
    ],
    # a switch the recipe leaves off, on top of it
    "plus_mixup": [f"{M}.mixup_alpha=0.2"],
}


def command(row: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "experiment=ravdess_audio",
        "stage=audio",
        "fold=all",
        f"tag=ablation_{row}",
        f"seed={SEED}",
        "logger=csv",
        "callbacks.progress_bar=null",
        *ROWS[row],
    ]


def summary_path(row: str) -> Path:
    return RUN_ROOT / f"ablation_{row}" / "audio" / "summary.json"


def collect_row(row: str) -> dict | None:
    path = summary_path(row)
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    val_mean, test_mean, test_std = summary["val"]["mean"], summary["test"]["mean"], summary["test"]["std"]
    times = fold_wall_times(path.parent)
    return {
        "row": row,
        "overrides": " ".join(ROWS[row]),
        "seed": summary.get("seed", SEED),
        "folds": len(summary["test"]["folds"]),
        "objective": summary["objective"]["metric"],
        "val_objective_mean": summary["objective"]["mean"],
        "val_objective_std": summary["objective"]["std"],
        "val_video_accuracy_mean": val_mean.get("video_accuracy"),
        "test_video_accuracy_mean": test_mean.get("video_accuracy"),
        "test_video_accuracy_std": test_std.get("video_accuracy"),
        "test_video_uar_mean": test_mean.get("video_uar"),
        "test_video_uar_std": test_std.get("video_uar"),
        "test_segment_accuracy_mean": test_mean.get("segment_accuracy"),
        "wall_s_per_fold_mean": sum(times) / len(times) if times else None,
        "wall_s_per_fold_max": max(times) if times else None,
    }


def collect() -> Path:
    rows = [r for r in (collect_row(name) for name in ROWS) if r is not None]
    CSV_PATH.parent.mkdir(parents=True, exist_ok=True)
    with CSV_PATH.open("w", newline="") as handle:
        fields = list(rows[0]) if rows else ["row"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    missing = [name for name in ROWS if not summary_path(name).is_file()]
    print(f"{CSV_PATH}: {len(rows)} of {len(ROWS)} rows" + (f"; missing: {', '.join(missing)}" if missing else ""))
    return CSV_PATH


def main(argv: list[str]) -> int:
    action, names = (argv[0] if argv else "list"), argv[1:]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows: {', '.join(ROWS)}")
    if action == "list":
        for name in ROWS:
            print(f"{name}: {' '.join(command(name)[2:])}")
    elif action == "run":
        for name in names or list(ROWS):
            if summary_path(name).is_file():
                print(f"{name}: done ({summary_path(name)})")
                continue
            print("+", " ".join(command(name)), flush=True)
            subprocess.run(command(name), cwd=ROOT, check=True)
        collect()
    elif action == "collect":
        collect()
    else:
        raise SystemExit(f"unknown action {action!r}: run, collect or list")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
