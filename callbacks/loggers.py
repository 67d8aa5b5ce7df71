"""Experiment loggers per (stage, fold) run: W&B (default, offline unless asked), CSV, or none.

W&B layout: one run per (stage, fold), named ``fold_<K>``, ``job_type`` = the stage, grouped by
``<corpus>-<cv>-<experiment>[-<tag>]``, with the resolved Hydra config as its config; ``fold=all`` adds a
``cv-summary`` run per stage (callbacks.fold_accuracy). Run files live in the run's own output folder.

Under ``wandb agent`` the agent hands the process one run id for the whole command, but a
cross-validation makes one run per fold: ``detach_agent_run`` moves the agent's variables aside so the
fold runs are ordinary runs, and the cv-summary run of the last stage is started as the agent's run
(``agent_run_environment``), so the sweep sees the cross-validated mean as its objective.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

AGENT_VARIABLES = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")
WANDB_ID_FILE = "wandb_run_id"  # in the fold folder: the id a resumed fold's W&B run continues
_STASH_PREFIX = "AVER_AGENT_"
WANDB_MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class AgentRun:
    """The run a ``wandb agent`` started this process for."""

    sweep_id: str
    run_id: str
    param_path: str | None


def detach_agent_run(environ: MutableMapping[str, str] = os.environ) -> AgentRun | None:
    """The agent's run, with its variables moved from ``WANDB_*`` to ``AVER_AGENT_WANDB_*``; None outside agents.

    W&B reads the run id and sweep id from the environment once per process, so this must happen before
    the first ``wandb.init``. Idempotent, and processes started later (DDP ranks) inherit the stash.
    """
    for name in AGENT_VARIABLES:
        if name in environ:
            environ[_STASH_PREFIX + name] = environ.pop(name)
    sweep_id = environ.get(_STASH_PREFIX + "WANDB_SWEEP_ID")
    run_id = environ.get(_STASH_PREFIX + "WANDB_RUN_ID")
    if not sweep_id or not run_id:
        return None
    return AgentRun(sweep_id, run_id, environ.get(_STASH_PREFIX + "WANDB_SWEEP_PARAM_PATH"))


@contextmanager
def agent_run_environment(agent: AgentRun | None) -> Iterator[None]:
    """Within the block, ``wandb.init`` starts the agent's own run (its id, its sweep, its parameters)."""
    if agent is None:
        yield
        return
    import wandb

    wandb.teardown()  # the W&B session read the environment without the agent's variables; start afresh
    restored = {"WANDB_SWEEP_ID": agent.sweep_id, "WANDB_RUN_ID": agent.run_id}
    if agent.param_path:
        restored["WANDB_SWEEP_PARAM_PATH"] = agent.param_path
    os.environ.update(restored)
    try:
        yield
    finally:
        for name in restored:
            os.environ.pop(name, None)
        wandb.teardown()


def experiment_name(cfg: DictConfig) -> str | None:
    """The ``experiment=`` choice of this Hydra run, or None when the config was composed without Hydra's app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get("experiment")
    return str(choice) if choice else None


def run_group(cfg: DictConfig) -> str:
    """``<corpus>-<cv>-<experiment>[-<tag>]``: the W&B group of every run of one configuration."""
    tag = str(cfg.get("tag") or "").replace("/", "-")
    parts = [cfg.data.name, cfg.cv.name, experiment_name(cfg), tag]
    return "-".join(str(p) for p in parts if p)


def is_wandb(logger_cfg: DictConfig | None) -> bool:
    """Whether the ``logger`` config node builds a W&B logger."""
    return bool(logger_cfg) and "_target_" in logger_cfg and issubclass(get_class(logger_cfg._target_), WandbLogger)


def wandb_mode(logger_cfg: DictConfig) -> str:
    """offline, online or disabled (``logger.mode``, which defaults to $WANDB_MODE, else offline)."""
    mode = str(logger_cfg.get("mode") or "offline")
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={mode!r}: expected one of {', '.join(WANDB_MODES)}")
    return mode


def wandb_init_kwargs(cfg: DictConfig, *, name: str, job_type: str, out_dir: Path) -> dict[str, Any]:
    """``wandb.init`` arguments for one run of ``cfg`` whose files go to ``out_dir`` (or ``logger.save_dir``)."""
    import wandb

    logger_cfg = cfg.logger
    save_dir = Path(logger_cfg.get("save_dir") or out_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    return {
        "project": logger_cfg.get("project"),
        "entity": logger_cfg.get("entity"),
        "group": logger_cfg.get("group") or run_group(cfg),
        "job_type": job_type,
        "name": name,
        "dir": str(save_dir),
        "mode": wandb_mode(logger_cfg),
        "tags": list(logger_cfg.get("tags") or []),
        "notes": logger_cfg.get("notes"),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "settings": wandb.Settings(silent=bool(logger_cfg.get("silent", True))),
    }


def fold_run_id(out_dir: Path, resume: bool) -> str | None:
    """The W&B run id of the fold in ``out_dir``: the one stored there when ``resume`` (a fold trained on
    from its last.ckpt continues its run), else a new one, stored. None on ranks other than zero."""
    if rank_zero_only.rank != 0:
        return None
    stored = out_dir / WANDB_ID_FILE
    if resume and stored.exists():
        return stored.read_text().strip()
    run_id = secrets.token_hex(4)  # not from the global generators, whose draws training must keep
    out_dir.mkdir(parents=True, exist_ok=True)
    stored.write_text(run_id)
    return run_id


def build_logger(cfg: DictConfig, *, stage: str, fold: int, out_dir: Path, resume: bool = False) -> Logger | bool:
    """The Lightning logger of one (stage, fold) run, or False for ``logger=none``.

    W&B: run ``fold_<K>``, ``job_type`` = stage, files under ``<out_dir>/wandb``; checkpoints become
    model artifacts only when the run is online (``logger.log_model``). ``resume``: the fold goes on from
    its last.ckpt, so the run goes on under the id stored in ``out_dir`` (``resume="allow"``, offline too).
    Other loggers (CSV) get ``save_dir=out_dir``. Cheap on every rank: a W&B run starts on rank zero at its
    first use.
    """
    logger_cfg = cfg.get("logger")
    if not logger_cfg or "_target_" not in logger_cfg:
        return False
    if not is_wandb(logger_cfg):
        return instantiate(logger_cfg, save_dir=str(out_dir))
    kwargs = wandb_init_kwargs(cfg, name=f"fold_{fold}", job_type=stage, out_dir=out_dir)
    kwargs |= {"id": fold_run_id(out_dir, resume), "resume": "allow"}
    log_model = bool(logger_cfg.get("log_model")) and kwargs["mode"] == "online"
    logger = get_class(logger_cfg._target_)(save_dir=kwargs.pop("dir"), log_model=log_model, **kwargs)
    logger._wandb_init.pop("anonymous", None)  # deprecated in wandb, which warns whenever it is passed
    return logger


def finish_logger(logger: Logger | bool, failed: bool) -> None:
    """End this fold's W&B run (a new ``wandb.init`` then starts the next fold's); no-op for other loggers.

    Only the process that started the run has one to finish (rank zero).
    """
    if isinstance(logger, WandbLogger) and logger._experiment is not None:
        logger._experiment.finish(exit_code=1 if failed else 0)
        logger._experiment = None
