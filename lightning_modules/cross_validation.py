"""What ``python train.py stage=<stage> fold=<K|all>`` does: train stages on folds, test, summarise.

Each (stage, fold) run writes ``<run_dir>/<stage>/fold_<K>/`` with ``config.yaml``,
``fold.json`` (what it was trained on), ``checkpoints/best.ckpt`` (chosen on ``objective.metric`` over
validation clips from training subjects only), ``checkpoints/last.ckpt`` (every epoch: a rerun resumes from
it, lightning_modules/resume.py), ``metrics.json`` (the chosen checkpoint's ``val`` and
``test`` metrics), ``plots/*_confusion.png`` and, with W&B, its run under ``wandb/``; ``fold=all`` adds
``<run_dir>/<stage>/summary.json``, ``fold_accuracy.png``, ``pooled_*_confusion.png``, a W&B
cv-summary run and a row per stage in ``<output_dir>/<corpus>/<cv>/results.csv``. ``fold=summary`` writes
the same from the folds' ``metrics.json`` when the folds ran as separate jobs (a multirun over ``fold=``,
e.g. on a cluster, shares the plain run folder).

Under DDP every rank runs this same sequence of folds and stages (Lightning re-launches the script on
each rank), so the trainers meet; files and W&B runs are written by rank zero only.
"""

from __future__ import annotations

import json
import os
import random
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from callbacks import build_callbacks
from callbacks.fold_accuracy import log_cv_summary_run, save_cv_summary_plots
from callbacks.leakage import LeakageGuard
from callbacks.loggers import AgentRun, build_logger, detach_agent_run, finish_logger, is_wandb
from callbacks.results_table import append_result, format_results_table, read_results, results_row
from datamodules.corpora import natural_key
from datamodules.datamodule import EmotionDataModule
from datamodules.feature_cache import Extractor, FeatureCache
from datamodules.features import FeatureDataModule, file_digest
from datamodules.preprocess import atomic_write_text
from lightning_modules.audio_module import AudioModule
from lightning_modules.base import EmotionModule
from lightning_modules.config_errors import (
    check_accelerator,
    check_fold,
    check_modalities,
    check_roots,
    check_stage,
    index_corpus,
)
from lightning_modules.cv_summary import (
    check_objective,
    fold_metrics,
    format_seeds_table,
    format_summary_table,
    split_metrics,
    summarize_folds,
    summarize_seeds,
)
from lightning_modules.resume import LAST_CHECKPOINT, FoldPlan, KeepEarlyStop, clear_fold, plan_fold, removed_if_failed
from lightning_modules.visual_module import VisualModule

STAGES = ("audio", "visual", "fusion")  # stage=all
BASELINE = "baseline"  # the classical floor (lightning_modules/baseline.py), run only when named
SUMMARY = "summary"  # fold=summary: summarise the folds that separate jobs trained, without training
STAGE_INPUTS = {"audio": ("audio",), "visual": ("faces",)}
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


class MissingCheckpointError(FileNotFoundError):
    """The fusion stage was asked for before the extractors it builds on were trained."""


class MismatchedCheckpointError(ValueError):
    """An extractor checkpoint was trained on another fold split, preprocessing or class list."""


class MissingFoldsError(FileNotFoundError):
    """``fold=summary`` was asked for before every fold of the stage had its metrics.json."""


class MismatchedFoldsError(ValueError):
    """A fold's metrics.json under the run folder was made with another fold split or seed than this run's."""


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


def other_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` without ``stage=`` and ``fold=``: the rest of a command to suggest for another stage or fold."""
    return [o for o in overrides if not o.startswith(("stage=", "fold="))]


def task_overrides() -> list[str]:
    """The command line's overrides in a Hydra run (none outside one): the rest of a command to suggest."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_tag(cfg: DictConfig, agent: AgentRun | None) -> str:
    """The run's ``tag`` (its outputs go to ``<corpus>/<cv>/<tag>/``): ``cfg.tag`` when set, else
    ``sweep-<sweep id>/<run id>`` under a W&B agent, ``multirun-<date>_<time>/<job number>`` in a Hydra
    multirun job that sweeps anything but ``fold``, else "" (the plain ``<corpus>/<cv>/`` layout).

    Jobs of different configurations thus never share a folder, while the jobs of a sweep over ``fold``
    alone (one cross-validation split into jobs, e.g. a SLURM array) write their folds into one run
    folder, where ``fold=summary`` gathers them."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if cfg.get("tag"):
        return str(cfg.tag)
    if agent is not None:
        return f"sweep-{agent.sweep_id}/{agent.run_id}"
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hydra = HydraConfig.get()
        swept = swept_keys(Path(hydra.sweep.dir))
        if swept is not None and swept <= {"fold"}:
            return ""
        return f"multirun-{'_'.join(Path(hydra.sweep.dir).parts[-2:])}/{hydra.job.num}"
    return ""


def swept_keys(sweep_dir: Path) -> set[str] | None:
    """The keys a Hydra multirun sweeps: its command-line sweeps (``fold=0,1,2``, ``lr=range(...)``) and the
    sweeper's ``params``, read from the ``multirun.yaml`` the sweeper saved in ``sweep_dir`` before starting
    any job (on the shared filesystem, so a cluster job reads it too); None when there is none."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file():
        return None
    config = OmegaConf.load(saved)
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return {o.key_or_group for o in overrides if o.is_sweep_override()} | set(params)


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


class TrainFromSeededState(L.Callback):
    """Training starts from the random state the run had just before ``fit``, whatever ran in between;
    a run resumed from a checkpoint goes on from the random state saved in it.

    ``fit`` prepares the data before it trains: on a cold cache that builds MTCNN to preprocess the
    clips (in this process when ``preprocess_workers`` is 1) or loads the
    frozen extractors to compute the fusion features; both initialise networks from the global
    generator, which a warm cache skips. ``capture`` before ``fit`` and the restore at ``on_fit_start``
    (after ``prepare_data`` and ``setup``) make shuffling, dropout and augmentation draw the same numbers
    in the first run of an experiment and in every rerun, and on every rank. Every checkpoint holds the
    random state of the moment it was saved (``state_dict``); resuming from one loads it in place of the
    captured state (``load_state_dict`` runs before ``on_fit_start``), so the epochs after a kill draw what
    they would have drawn in one uninterrupted run.
    """

    def __init__(self) -> None:
        self.states: dict | None = None

    def capture(self) -> None:
        self.states = self.state_dict()

    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": (kind, keys.tolist(), position, has_gauss, cached_gaussian),  # plain types: weights_only loads
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.states = state_dict

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.states is None:
            raise RuntimeError("TrainFromSeededState.capture() must be called before fit")
        kind, keys, position, has_gauss, cached_gaussian = self.states["numpy"]
        random.setstate(self.states["python"])
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
        torch.set_rng_state(self.states["torch"])
        if self.states["cuda"] is not None:
            torch.cuda.set_rng_state_all(self.states["cuda"])


def stage_data(
    cfg: DictConfig, stage: str, fold: int, datamodule: EmotionDataModule, provenance: dict
) -> L.LightningDataModule:
    """The data ``stage`` trains on: the corpus's segments with the stage's inputs, or for the fusion stage
    the features of the fold's audio and visual extractors (refused when missing or of another fold split)."""
    batch_size = cfg.model[stage].batch_size
    if stage != "fusion":
        datamodule.inputs, datamodule.batch_size = STAGE_INPUTS[stage], batch_size
        return datamodule
    audio_ckpt, visual_ckpt = upstream_checkpoints(cfg, fold, task_overrides())
    check_upstream_provenance(provenance, {"audio": audio_ckpt, "visual": visual_ckpt}, task_overrides())
    precision = str(cfg.trainer.precision)
    checkpoints = {"audio": (AudioModule, audio_ckpt), "visual": (VisualModule, visual_ckpt)}
    return FeatureDataModule(
        datamodule,
        {
            name: partial(frozen_extractor, module_class, path, precision)
            for name, (module_class, path) in checkpoints.items()
        },
        {name: {"checkpoint": file_digest(path), "precision": precision} for name, (_, path) in checkpoints.items()},
        fold_dir(cfg, stage, fold) / "features",
        batch_size=batch_size,
    )


def frozen_extractor(module_class: type[EmotionModule], checkpoint: Path, precision: str) -> Extractor:
    """The fold's trained extractor, frozen: a batch of segments -> their features (``extract_features``), on
    the GPU when there is one, under autocast for the "16-mixed" and "bf16-mixed" precisions (fp32 otherwise)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = module_class.load_from_checkpoint(checkpoint, map_location=device).eval()
    dtype = AUTOCAST_DTYPES.get(precision)

    def extract(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return module.extract_features({name: value.to(device) for name, value in batch.items()}).float()

    return extract


def upstream_change(data: L.LightningDataModule, out: Path) -> str | None:
    """Why a fusion fold's earlier results are stale though its config is the same (its extractors were
    retrained since), or None."""
    has_results = (out / "metrics.json").exists() or (out / LAST_CHECKPOINT).exists()
    if isinstance(data, FeatureDataModule) and has_results and not data.cache_is_current:
        return (
            f"its audio or visual extractor changed since ({data.cache_root.name}/ holds other checkpoints' features)"
        )
    return None


def train_stage(cfg: DictConfig, stage: str, fold: int, datamodule: EmotionDataModule) -> dict:
    """Train ``stage`` on ``fold``, choose its checkpoint on validation clips, test it, write metrics.json.

    A fold finished with the same config is skipped and an unfinished one goes on from its last.ckpt
    (``resume``, lightning_modules/resume.py). With ``test_only=true`` the fold's existing best.ckpt is
    evaluated without training (for instance on another number of devices: the metrics are the same).
    """
    out = fold_dir(cfg, stage, fold)
    test_only = bool(cfg.get("test_only"))
    if test_only and not best_checkpoint(cfg, stage, fold).exists():
        raise FileNotFoundError(
            f"test_only=true: stage={stage} fold={fold} has no checkpoint {best_checkpoint(cfg, stage, fold)}"
        )
    datamodule.fold = fold
    provenance = fold_provenance(cfg, stage, fold, datamodule)
    data = stage_data(cfg, stage, fold, datamodule, provenance)
    plan = FoldPlan() if test_only else plan_fold(cfg, out, upstream_change(data, out))
    if plan.metrics is not None:
        return plan.metrics
    with removed_if_failed(out):
        if not test_only and plan.checkpoint is None:
            clear_fold(out)
        # a test-only run keeps the training run's config.yaml
        write_fold_files(cfg, out, provenance, "test_config.yaml" if test_only else "config.yaml")
        return fit_and_test(cfg, stage, fold, datamodule, data, provenance, plan.checkpoint, test_only=test_only)


def fit_and_test(
    cfg: DictConfig,
    stage: str,
    fold: int,
    datamodule: EmotionDataModule,
    data: L.LightningDataModule,
    provenance: dict,
    resume_from: Path | None,
    *,
    test_only: bool,
) -> dict:
    """Fit ``data`` (the corpus ``datamodule`` itself, or the fusion stage's features of it) from
    ``resume_from`` when given, not at all with ``test_only``; then validate and test the checkpoint chosen
    on ``objective.metric`` over the validation subjects (the ``val`` and ``test`` blocks of metrics.json)."""
    out, stage_cfg = fold_dir(cfg, stage, fold), cfg.model[stage]
    L.seed_everything(cfg.seed + fold, workers=True)  # the module's initial weights
    module = instantiate(
        stage_cfg.module, _convert_="all", num_classes=len(datamodule.classes), class_names=list(datamodule.classes)
    )
    if stage == "visual":
        read_frozen_features(cfg, module, datamodule)
    subjects = subjects_of_fold(datamodule)
    logger = build_logger(cfg, stage=stage, fold=fold, out_dir=out, resume=resume_from is not None)
    context = {
        "dirpath": str(out / "checkpoints"),
        "out_dir": str(out),
        "stage": stage,
        "fold": fold,
        "test_subjects": subjects["test"],
    }
    seeded_state = TrainFromSeededState()
    callbacks = [
        *build_callbacks(cfg.callbacks, context, has_logger=logger is not False),
        seeded_state,
        KeepEarlyStop(),
        LeakageGuard(datamodule),
    ]
    trainer: L.Trainer = instantiate(
        cfg.trainer, **stage_cfg.get("trainer", {}), callbacks=callbacks, logger=logger, default_root_dir=str(out)
    )
    failed = True
    try:
        if test_only:
            best: str | None = str(best_checkpoint(cfg, stage, fold))
        else:
            seeded_state.capture()
            trainer.fit(module, datamodule=data, ckpt_path=resume_from)
            checkpoint = trainer.checkpoint_callback
            best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
            expected = best_checkpoint(cfg, stage, fold)
            if best and Path(best).resolve() != expected.resolve():
                raise RuntimeError(f"checkpoint saved as {best}; expected {expected}")
        trainer.validate(module, datamodule=data, ckpt_path=best)
        trainer.test(module, datamodule=data, ckpt_path=best)
        failed = False
    finally:
        finish_logger(logger, failed)
    val, test = split_metrics(module.last_eval["val"]), split_metrics(module.last_eval["test"])
    metrics = {
        **fold_metrics(provenance, subjects, OmegaConf.to_container(cfg.objective), val, test),
        "best_checkpoint": best,
    }
    if trainer.is_global_zero:
        atomic_write_text(json.dumps(metrics, indent=2), out / "metrics.json")
    return metrics


def read_frozen_features(cfg: DictConfig, module: VisualModule, datamodule: EmotionDataModule) -> None:
    """When ``module`` has a frozen part whose output can stand for the face crops (``frozen_extractor``), fill
    its cache once per distinct crop of every prepared clip (of the test corpus too) under
    ``<cache_dir>/frozen_features/<corpus>/`` and make the batches carry that output instead of the crops."""
    extractor = module.frozen_extractor()
    if extractor is None:
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    for corpus in filter(None, (datamodule, datamodule.test_corpus)):
        corpus.prepare_data()
        corpus.setup()
        key = {"clips": corpus.cache_folder.name, **module.frozen_key()}
        cache = FeatureCache(Path(cfg.paths.cache_dir) / "frozen_features" / corpus.name, key)
        crops = ((clip.clip_id, {"faces": record["face_frames"]}) for clip, record in zip(corpus.clips, corpus.records))
        cache.fill(crops, extractor, total=len(corpus.clips))
        corpus.frame_features = cache.load()
    module.cpu()
    datamodule.inputs = ("frame_features",)


def subjects_of_fold(datamodule: EmotionDataModule) -> dict[str, list[str]]:
    """The subjects of the current fold's validation and test clips (the test ones of the test corpus in a
    cross-corpus run)."""
    subject_of = {clip.clip_id: clip.subject for clip in datamodule.index().clips}
    fold = datamodule.current_fold
    return {"val": sorted({subject_of[c] for c in fold.val}, key=natural_key), "test": list(fold.test_subjects)}


def finish_cross_validation(cfg: DictConfig, summary: dict, agent: AgentRun | None, is_last: bool) -> None:
    """After ``fold=all`` of one stage (rank zero): summary.json, its plots, the W&B cv-summary run (the
    agent's run when ``is_last`` under ``wandb agent``) and a results.csv row."""
    stage_dir = Path(cfg.paths.run_dir) / summary["stage"]
    atomic_write_text(json.dumps(summary, indent=2), stage_dir / "summary.json")
    plots = save_cv_summary_plots(summary, stage_dir)
    log_cv_summary_run(cfg, summary, plots, stage_dir, agent if is_last else None)
    results = Path(cfg.paths.output_dir) / summary["corpus"] / summary["cv"] / "results.csv"
    append_result(results, results_row(summary, str(cfg.tag), task_overrides(), Path(cfg.paths.run_dir)))
    print(f"\n{results}:\n" + format_results_table(read_results(results), stage=summary["stage"]))


def summarises(cfg: DictConfig) -> bool:
    """Whether the run ends with the cross-validation summary: ``fold=all`` or ``fold=summary``."""
    return str(cfg.fold) in ("all", SUMMARY)


def resolve_folds(cfg: DictConfig, datamodule: EmotionDataModule) -> list[int]:
    """The fold indices ``fold=`` names (one index, all or summary), or an error naming the valid range."""
    return check_fold(str(cfg.fold), len(datamodule.folds), datamodule.name, cfg.cv.name, task_overrides())


def gather_fold_metrics(cfg: DictConfig, stage: str, datamodule: EmotionDataModule) -> list[dict]:
    """``fold=summary``: the metrics.json of every fold of ``stage`` under the run folder, as separate jobs
    wrote them; an error naming the folds still missing (and the command that trains them), or those made
    with another fold split or seed than this run's configuration."""
    folds = resolve_folds(cfg, datamodule)
    paths = [fold_dir(cfg, stage, fold) / "metrics.json" for fold in folds]
    missing = [fold for fold, path in zip(folds, paths) if not path.is_file()]
    if missing:
        kept = " ".join(other_overrides(task_overrides()))
        raise MissingFoldsError(
            f"fold={SUMMARY} of stage={stage}: fold(s) {', '.join(map(str, missing))} of {len(folds)} have no "
            f"metrics.json under {Path(cfg.paths.run_dir) / stage}; train them first, e.g.\n"
            f"  python train.py -m stage={stage} fold={','.join(map(str, missing))} {kept}".rstrip()
        )
    metrics = [json.loads(path.read_text()) for path in paths]
    for fold, path, record in zip(folds, paths, metrics):
        expected = {"fold_hash": datamodule.folds[fold].content_hash, "seed": int(cfg.seed)}
        found = {key: record.get(key) for key in expected}
        if found != expected:
            raise MismatchedFoldsError(
                f"fold={SUMMARY} of stage={stage}: {path} has {found}, "
                f"this configuration {expected} (another fold split or seed); retrain that fold or set the "
                f"overrides it was trained with"
            )
    return metrics


def train_folds(cfg: DictConfig, stages: tuple[str, ...], datamodule: EmotionDataModule) -> dict[str, list[dict]]:
    """Train and test every requested (fold, stage) with ``cfg.seed``, fold by fold (fusion after its
    extractors); each stage's metrics.json contents in fold order."""
    results: dict[str, list[dict]] = {stage: [] for stage in stages}
    for fold in resolve_folds(cfg, datamodule):
        for stage in stages:
            if stage == BASELINE:
                from lightning_modules.baseline import train_baseline  # it builds on this module's helpers

                results[stage].append(train_baseline(cfg, fold, datamodule))
            else:
                results[stage].append(train_stage(cfg, stage, fold, datamodule))
    return results


def cross_validate(
    cfg: DictConfig, stages: tuple[str, ...], datamodule: EmotionDataModule, agent: AgentRun | None
) -> dict[str, dict]:
    """Every requested (fold, stage) with ``cfg.seed`` (or, for ``fold=summary``, their metrics.json as
    separate jobs wrote them); the summary of each stage (summary.json etc. for ``fold=all|summary``)."""
    if str(cfg.fold) == SUMMARY:
        results = {stage: gather_fold_metrics(cfg, stage, datamodule) for stage in stages}
    else:
        results = train_folds(cfg, stages, datamodule)
    summaries = {}
    for stage in stages:
        summary = summarize_folds(results[stage], cfg.objective)
        summaries[stage] = summary
        if rank_zero_only.rank != 0:
            continue
        print("\n" + format_summary_table(summary))
        if summarises(cfg):
            finish_cross_validation(cfg, summary, agent, is_last=stage == stages[-1])
    return summaries


def run(cfg: DictConfig) -> dict[str, dict]:
    """Run ``cfg.stage`` (one stage or ``all``) on ``cfg.fold`` (one fold or ``all``), once with ``seed`` or
    once per seed of ``seeds``; returns per stage its summary (one seed) or its seeds summary.

    With ``seeds=[a,b,...]`` each seed's run goes to ``<run_dir>/seed_<s>/`` (the fusion stage reads that
    seed's extractors) and ``fold=all`` adds ``<run_dir>/<stage>/seeds_summary.json``: per seed the fold
    means, and the spread over seeds beside the spread over folds.
    """
    overrides = task_overrides()
    check_stage(str(cfg.stage), (*STAGES, "all", BASELINE), overrides)
    stages = STAGES if cfg.stage == "all" else (cfg.stage,)
    check_objective(cfg.objective)
    check_accelerator(cfg.trainer, overrides)
    check_roots(cfg, overrides)
    check_modalities(stages, cfg.data.preprocess, cfg.data.name, overrides)
    seeds = [int(seed) for seed in cfg.get("seeds") or []]
    agent = detach_agent_run(os.environ)
    if agent is not None and (str(cfg.fold) != "all" or not is_wandb(cfg.get("logger")) or seeds):
        raise ValueError(
            f"under wandb agent (sweep {agent.sweep_id}) a run must be fold=all with logger=wandb and one seed: "
            f"the sweep's objective is the cross-validated mean, logged by the cv-summary run (got "
            f"fold={cfg.fold}, logger={(cfg.get('logger') or {}).get('_target_', 'none')}, seeds={seeds or None})"
        )
    cfg.tag = run_tag(cfg, agent)
    datamodule: EmotionDataModule = instantiate(cfg.data, cv=instantiate(cfg.cv.folds))
    for key, corpus in (("data", datamodule), ("test_data", datamodule.test_corpus)):
        if corpus is not None:
            index_corpus(key, corpus, overrides)
    if not seeds:
        return cross_validate(cfg, stages, datamodule, agent)
    base_tag, base_run_dir = str(cfg.tag), Path(cfg.paths.run_dir)
    per_seed: dict[str, list[dict]] = {stage: [] for stage in stages}
    for seed in seeds:
        cfg.seed, cfg.tag = seed, f"{base_tag}/seed_{seed}" if base_tag else f"seed_{seed}"
        for stage, summary in cross_validate(cfg, stages, datamodule, agent).items():
            per_seed[stage].append(summary)
    seeds_summaries = {stage: summarize_seeds(per_seed[stage]) for stage in stages}
    if rank_zero_only.rank == 0:
        for stage, seeds_summary in seeds_summaries.items():
            print("\n" + format_seeds_table(seeds_summary))
            if summarises(cfg):
                (base_run_dir / stage).mkdir(parents=True, exist_ok=True)
                atomic_write_text(json.dumps(seeds_summary, indent=2), base_run_dir / stage / "seeds_summary.json")
    return seeds_summaries
