"""``python train.py data=<corpus>`` runs that corpus's own experiment (``configs/corpus_experiments.yaml``).

Hydra cannot pick a config that holds ``override`` lines (every experiment does) by interpolating another
choice, so ``train.py`` adds ``experiment=<the corpus's>`` to the command line before Hydra composes it, and
says so. An ``experiment=`` on the command line always wins; a sweep over corpora (``data=a,b``) is left as
it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from lightning_modules.config_errors import override_key

CORPUS_EXPERIMENTS = "corpus_experiments.yaml"


def given_values(args: Sequence[str]) -> dict[str, str]:
    """What each ``key=value`` (or ``+key=value``) argument sets, by key."""
    return {override_key(arg): arg.partition("=")[2] for arg in args if "=" in arg and not arg.startswith("-")}


def corpus_experiment(args: Sequence[str], config_dir: Path) -> str | None:
    """The experiment the command line ``args`` should run when they name one corpus (``data=X``) and no
    experiment: ``configs/corpus_experiments.yaml``'s entry for X; None otherwise."""
    given = given_values(args)
    corpus = given.get("data")
    if "experiment" in given or not corpus or "," in corpus:
        return None
    return OmegaConf.load(config_dir / CORPUS_EXPERIMENTS).get(corpus)


def with_corpus_experiment(args: Sequence[str], config_dir: Path) -> list[str]:
    """``args`` with ``experiment=<corpus_experiment>`` after their ``data=`` when there is one (among the other
    overrides, which argparse wants together), said on stdout."""
    experiment = corpus_experiment(args, config_dir)
    if experiment is None:
        return list(args)
    at = next(i for i, arg in enumerate(args) if override_key(arg) == "data" and "=" in arg) + 1
    print(
        f"{args[at - 1].lstrip('+')}: experiment={experiment}, the corpus's recipe "
        f"(configs/{CORPUS_EXPERIMENTS}; name another experiment= to change it)"
    )
    return [*args[:at], f"experiment={experiment}", *args[at:]]
