"""The Optuna sweeper of ``configs/hparams_search/*.yaml``: ``n_trials`` is the study's total, so rerunning
an interrupted search resumes it.

hydra-optuna-sweeper runs ``n_trials`` new trials on every invocation: rerunning a 20-trial search stopped
after 7 would run 20 more. ``ResumableOptunaSweeper`` runs only the trials the stored study still lacks
(trials left running by the interruption are not counted: new ones take their place). It also creates
the folder of a ``sqlite:///`` storage, which Optuna opens before any job has made the output folders.

Hydra finds it because ``hydra_plugins`` is a namespace package: this folder (the repository root is on
``sys.path``) joins the installed plugins. Optuna is imported only when a search runs, not on every
Hydra start-up.
"""

from __future__ import annotations

from pathlib import Path

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

SQLITE = "sqlite:///"


class ResumableOptunaSweeper(OptunaSweeper):
    """``hydra/sweeper: optuna`` counting ``n_trials`` over the stored study (see the module docstring)."""

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        impl = self.sweeper
        finished = finished_trials(impl.storage, impl.study_name)
        impl.n_trials = max(impl.n_trials - finished, 0)
        if finished and isinstance(impl.sampler, optuna.samplers.BaseSampler):
            # a seeded sampler would otherwise replay the random start-up draws of the first trials
            impl.sampler.reseed_rng()
        return super().sweep(arguments)


def finished_trials(storage: str | None, study_name: str | None) -> int:
    """How many trials of the stored study ``study_name`` have ended (complete, pruned or failed); 0 when
    there is no storage or no such study yet."""
    import optuna

    if not storage:
        return 0
    if storage.startswith(SQLITE):
        Path(storage[len(SQLITE) :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # optuna 2.x: "No such study"
        return 0
    return sum(trial.state.is_finished() for trial in study.get_trials(deepcopy=False))
