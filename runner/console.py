"""What ``train.py`` prints besides its epoch lines and tables: Lightning's own lines (off unless
``verbose=true``), a word on where offline W&B runs go, and the closing lines naming where the results are."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from runner.fold_files import fold_dir
from tracking.loggers import is_wandb, wandb_mode

LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def set_lightning_verbosity(verbose: bool) -> None:
    """Lightning's info lines (device banners, tips, checkpoint restores) shown only when ``verbose``;
    its warnings always."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def offline_wandb(cfg: DictConfig) -> bool:
    """Whether this run's W&B runs are written offline."""
    return is_wandb(cfg.get("logger")) and wandb_mode(cfg.logger) == "offline"


def wandb_sync_command(run_dir: Path) -> str:
    """The command that uploads every offline W&B run under ``run_dir`` (folds and cv-summary runs)."""
    return f"wandb sync {run_dir}/*/fold_*/wandb/offline-run-* {run_dir}/*/wandb/offline-run-*"


def wandb_notice(cfg: DictConfig) -> str | None:
    """Where this run's offline W&B runs are written and how to see them; None when not offline W&B."""
    if not offline_wandb(cfg):
        return None
    return (
        f"W&B runs are written offline to {cfg.paths.run_dir}/<stage>/fold_<K>/wandb/ (nothing is uploaded); "
        f"to view them on wandb.ai run `wandb login` once, then `{wandb_sync_command(Path(cfg.paths.run_dir))}`"
    )


def _paths(paths: Sequence[Path]) -> str:
    return ", ".join(str(path) for path in paths)


def closing_lines(cfg: DictConfig, stages: Sequence[str], folds: Sequence[int], results_csv: Path | None) -> list[str]:
    """Where the run's results are: the run folder, each stage's summary.json and plots (those written),
    results.csv and, for offline W&B, the runs' folders and the command that uploads them."""
    run_dir = Path(cfg.paths.run_dir)
    lines = ["", f"Results of this run: {run_dir}"]
    for stage in stages:
        stage_dir = run_dir / stage
        summary = [path for path in (stage_dir / "summary.json", stage_dir / "seeds_summary.json") if path.is_file()]
        plots = [stage_dir / "*.png"] if any(stage_dir.glob("*.png")) else []
        plots += [path for path in (fold_dir(cfg, stage, fold) / "plots" for fold in folds) if path.is_dir()]
        parts = [f"summary {_paths(summary)}"] * bool(summary) + [f"plots {_paths(plots)}"] * bool(plots)
        if parts:
            lines.append(f"  {stage}: " + "; ".join(parts))
    if results_csv is not None:
        lines.append(f"  results table (every run of this corpus and cv): {results_csv}")
    if offline_wandb(cfg):
        lines.append(f"  W&B offline runs: {run_dir}/<stage>/fold_<K>/wandb/; upload: {wandb_sync_command(run_dir)}")
    return lines
