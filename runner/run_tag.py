"""The run's ``tag``: the folder of its outputs under ``<corpus>/<cv>/``, so that runs of different
configurations never share one."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tracking.loggers import AgentRun


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
