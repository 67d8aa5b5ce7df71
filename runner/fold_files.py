"""A (stage, fold) run's folder and the records written in it: ``config.yaml``, ``fold.json`` (what it was
trained on) and the checks that the fusion stage's extractors were trained on the same split."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from datamodules.atomic import atomic_write_text
from datamodules.corpora import natural_key
from datamodules.datamodule import EmotionDataModule
from runner.command_line import other_overrides


class MissingCheckpointError(FileNotFoundError):
    """The fusion stage was asked for before the extractors it builds on were trained."""


class MismatchedCheckpointError(ValueError):
    """An extractor checkpoint was trained on another fold split, preprocessing or class list."""


def fold_dir(cfg: DictConfig, stage: str, fold: int) -> Path:
    return Path(cfg.paths.run_dir) / stage / f"fold_{fold}"


def best_checkpoint(cfg: DictConfig, stage: str, fold: int) -> Path:
    return fold_dir(cfg, stage, fold) / "checkpoints" / "best.ckpt"


def upstream_checkpoints(cfg: DictConfig, fold: int, overrides: list[str] | None = None) -> tuple[Path, Path]:
    """The best audio and visual checkpoints of ``fold`` under ``paths.upstream_dir`` (default: the run
    folder), or an error naming the commands to run first."""
    upstream = Path(cfg.paths.get("upstream_dir") or cfg.paths.run_dir)
    paths = {stage: upstream / stage / f"fold_{fold}" / "checkpoints" / "best.ckpt" for stage in ("audio", "visual")}
    missing = [stage for stage, path in paths.items() if not path.exists()]
    if missing:
        kept = other_overrides(overrides or [])
        commands = "\n".join(f"  python train.py {' '.join([f'stage={s}', f'fold={fold}', *kept])}" for s in missing)
        raise MissingCheckpointError(
            f"stage=fusion fold={fold} needs the {' and '.join(missing)} extractor checkpoint(s) "
            f"{', '.join(str(paths[s]) for s in missing)}; run first:\n{commands}"
        )
    return paths["audio"], paths["visual"]


def fold_provenance(cfg: DictConfig, stage: str, fold: int, datamodule: EmotionDataModule) -> dict:
    """What a (stage, fold) is trained on, written as ``fold.json`` in its folder (``write_fold_files``).

    ``fold_hash`` identifies the fold's train/val/test clip ids; ``preprocess_key`` the clip cache (the
    preprocessing config and the corpus root). The fusion stage refuses extractors whose values differ.
    """
    return {
        "stage": stage,
        "fold": fold,
        "corpus": datamodule.name,
        "root": datamodule.source,
        "cv": OmegaConf.to_container(cfg.cv, resolve=True),
        "fold_hash": datamodule.current_fold.content_hash,
        "preprocess_key": datamodule.cache_folder.name,
        "class_names": list(datamodule.classes),
        "seed": int(cfg.seed),
        "test_corpus": datamodule.current_fold.test_corpus,
        "dropped_classes": datamodule.current_fold.dropped_classes,
    }


def write_fold_files(cfg: DictConfig, out: Path, provenance: dict, config_name: str = "config.yaml") -> None:
    """The resolved config (as ``config_name``) and ``fold.json`` in the fold folder ``out`` (rank zero)."""
    if rank_zero_only.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(OmegaConf.to_yaml(cfg, resolve=True), out / config_name)
        atomic_write_text(json.dumps(provenance, indent=2), out / "fold.json")


def check_upstream_provenance(own: dict, checkpoints: dict[str, Path], overrides: list[str]) -> None:
    """Refuse extractor checkpoints trained on another fold split, preprocessing or class list than ``own``."""
    kept = " ".join(other_overrides(overrides))
    for stage, checkpoint in checkpoints.items():
        record = checkpoint.parent.parent / "fold.json"
        retrain = f"python train.py stage={stage} fold={own['fold']} {kept}".rstrip()
        if not record.exists():
            raise MismatchedCheckpointError(
                f"stage=fusion fold={own['fold']}: {checkpoint} has no {record.name} beside it, so what it was "
                f"trained on is unknown; retrain it:\n  {retrain}"
            )
        theirs = json.loads(record.read_text())
        for key in ("fold_hash", "preprocess_key", "class_names"):
            if theirs.get(key) != own[key]:
                raise MismatchedCheckpointError(
                    f"stage=fusion fold={own['fold']}: the {stage} extractor {checkpoint} was trained with "
                    f"{key}={theirs.get(key)} but this run has {key}={own[key]} (another fold split, "
                    f"preprocessing or corpus). Retrain it with this configuration:\n  {retrain}"
                )


def subjects_of_fold(datamodule: EmotionDataModule) -> dict[str, list[str]]:
    """The subjects of the current fold's validation and test clips (the test ones of the test corpus in a
    cross-corpus run)."""
    subject_of = {clip.clip_id: clip.subject for clip in datamodule.index().clips}
    fold = datamodule.current_fold
    return {"val": sorted({subject_of[c] for c in fold.val}, key=natural_key), "test": list(fold.test_subjects)}
