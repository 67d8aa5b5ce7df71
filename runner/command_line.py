"""Mistakes on the command line, told in one line: the value, what is allowed, and a command that works.

``train.py`` prints a ``ConfigError`` (and every other error it expects: ``runner.expected_errors``) as that
one line (``one_line_errors``) and exits with status 1, without a traceback; ``HYDRA_FULL_ERROR=1`` raises it
as usual. Config names Hydra would not find (``experiment=``, ``data=``, any config group) are checked before Hydra composes the config
(``check_choices``): Hydra's own message lists the options but no command. The checks of ``run`` come
before the corpus is indexed (and the demo corpus generated) and before any fold folder is made.

``python train.py data=<corpus>`` runs that corpus's own experiment (``configs/corpus_experiments.yaml``).
Hydra cannot pick a config that holds ``override`` lines (every experiment does) by interpolating another
choice (its documented restriction on interpolated defaults), so ``train.py`` adds
``experiment=<the corpus's>`` to the command line before Hydra composes it, and says so. An ``experiment=`` on
the command line always wins; a sweep over corpora (``data=a,b``) is left as it is.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.clips import CorpusLayoutError, NoClipsError

if TYPE_CHECKING:
    from datamodules.datamodule import EmotionDataModule

GPU_ACCELERATORS = ("gpu", "cuda")
# what a CPU run leaves out of a GPU command
DEVICE_KEYS = (
    "trainer",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.precision",
    "trainer.sync_batchnorm",
)


class ConfigError(ValueError):
    """A configuration value that cannot run; its message names the value, what is allowed and a command
    that would work."""


def override_key(override: str) -> str:
    """The key an override sets: ``data.root`` of ``+data.root=/x``."""
    return override.lstrip("+~").partition("=")[0]


def train_command(overrides: Sequence[str], changes: Mapping[str, str | None], program: str = "train.py") -> str:
    """``try: python <program> <overrides>`` with the keys of ``changes`` set to their values in place
    (appended when absent) or, for None, left out."""
    args = [
        o if override_key(o) not in changes else f"{o.partition('=')[0]}={changes[override_key(o)]}"
        for o in overrides
        if changes.get(override_key(o), "") is not None
    ]
    given = {override_key(o) for o in overrides}
    args += [f"{key}={value}" for key, value in changes.items() if value is not None and key not in given]
    return " ".join([f"try: python {program}", *args])


def closest(value: str, allowed: Sequence[str]) -> str:
    """The allowed value most like ``value``."""
    return (difflib.get_close_matches(value, allowed, n=1, cutoff=0.0) or list(allowed))[0]


def check_choices(args: Sequence[str], config_dir: Path) -> None:
    """A ``ConfigError`` for a ``<group>=<name>`` argument when ``configs/<group>/`` has no ``<name>.yaml``
    (each name of a multirun list ``a,b``; sweep expressions are left to Hydra)."""
    for arg in args:
        key, has_value, value = arg.lstrip("+~").partition("=")
        group = key.partition("@")[0]
        if arg.startswith("-") or not has_value or group.startswith("hydra") or not (config_dir / group).is_dir():
            continue
        allowed = sorted(path.stem for path in (config_dir / group).glob("*.yaml"))
        for name in value.split(","):
            if name not in (*allowed, "null") and "(" not in value:
                fixed = ",".join(closest(n, allowed) if n == name else n for n in value.split(","))
                raise ConfigError(
                    f"{key}={name}: configs/{group}/ has no {name}.yaml; choose one of {', '.join(allowed)}; "
                    f"{train_command(args, {key: fixed})}"
                )


def check_stage(stage: str, allowed: Sequence[str], overrides: Sequence[str]) -> None:
    if stage not in allowed:
        raise ConfigError(
            f"stage={stage}: no such stage; choose one of {', '.join(allowed)}; "
            f"{train_command(overrides, {'stage': closest(stage, allowed)})}"
        )


def check_modalities(stages: Sequence[str], preprocess: DictConfig, corpus: str, overrides: Sequence[str]) -> None:
    """A stage that needs audio on a corpus without sound (``data.preprocess.audio=false``, CK+), or faces on
    one without video (``video=false``, RAVDESS speech)."""
    needs = {"audio": ("audio", "fusion"), "video": ("visual", "fusion")}
    other_stage = {"audio": "visual", "video": "audio"}
    for modality, needing in needs.items():
        refused = [stage for stage in stages if stage in needing]
        if refused and not preprocess[modality]:
            raise ConfigError(
                f"stage={'/'.join(refused)}: data={corpus} has no {modality} (data.preprocess.{modality}=false); "
                f"choose stage={other_stage[modality]} or baseline; "
                f"{train_command(overrides, {'stage': other_stage[modality]})}"
            )


def check_fold(fold: str, n_folds: int, corpus: str, cv: str, overrides: Sequence[str]) -> list[int]:
    """The fold indices ``fold=`` names (one index, all, or summary: every fold, gathered without training)."""
    if fold in ("all", "summary"):
        return list(range(n_folds))
    if fold.isdigit() and int(fold) < n_folds:
        return [int(fold)]
    suggestion = str(n_folds - 1) if fold.isdigit() else "all"
    raise ConfigError(
        f"fold={fold}: {corpus} has folds 0..{n_folds - 1} under cv={cv}, or fold=all (or summary); "
        f"{train_command(overrides, {'fold': suggestion})}"
    )


def check_accelerator(trainer: DictConfig, overrides: Sequence[str]) -> None:
    """A GPU trainer on a machine where torch sees no CUDA device."""
    accelerator = str(trainer.get("accelerator"))
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer={group_choice('trainer')} (trainer.accelerator={accelerator}): this machine has no CUDA GPU "
            f"(torch.cuda.is_available() is False); trainer=default trains on the CPU; "
            f"{train_command(overrides, dict.fromkeys(DEVICE_KEYS))}"
        )


def check_roots(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """``data.root`` (and ``test_data.root``) unset (missing or null) or not a folder, for corpora that are not
    generated."""
    corpora = [(key, cfg.get(key)) for key in ("data", "test_data")]
    for key, corpus in corpora:
        if corpus is not None and corpus.get("corpora") is not None:  # data=multi: each member's root
            corpora += [(f"{key}.corpora.{name}", member) for name, member in corpus.corpora.items()]
    for key, corpus in corpora:
        if corpus is None or corpus.get("generator") is not None or corpus.get("corpora") is not None:
            continue
        example = train_command(overrides, {f"{key}.root": f"/path/to/{corpus.name}"})
        if OmegaConf.is_missing(corpus, "root") or corpus.root is None:
            raise ConfigError(f"{key}.root is not set: {key}={corpus.name} reads its clips from it; {example}")
        if not Path(corpus.root).expanduser().is_dir():
            raise ConfigError(f"{key}.root={corpus.root}: no such folder ({key}={corpus.name}); {example}")


def index_corpus(key: str, corpus: EmotionDataModule, overrides: Sequence[str]) -> None:
    """Index ``corpus`` (the one of ``data`` or ``test_data``): a root without a clip of its layout is a
    ``ConfigError``."""
    try:
        corpus.index()
    except NoClipsError as error:
        example = train_command(overrides, {f"{key}.root": f"/path/to/{corpus.name}"})
        raise ConfigError(f"{key}.root={corpus.root}: {error}; {example}") from error
    except CorpusLayoutError as error:  # on_error=raise, or a table that cannot be read
        example = train_command(overrides, {f"{key}.indexer.on_error": "skip"})
        raise ConfigError(f"{key}={corpus.name}: {error}; {example}") from error
    except ValueError as error:  # an indexer option that means nothing (a pattern without {label}, ...)
        raise ConfigError(f"{key}.indexer: {error}; {train_command(overrides, {})}") from error


def group_choice(group: str) -> str | None:
    """The config of ``group`` this Hydra run composed (``trainer=gpu``: "gpu"); None outside Hydra's app."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def other_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` without ``stage=`` and ``fold=``: the rest of a command to suggest for another stage or fold."""
    return [o for o in overrides if not o.startswith(("stage=", "fold="))]


def task_overrides() -> list[str]:
    """The command line's overrides in a Hydra run (none outside one): the rest of a command to suggest."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


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


def with_test_corpora(args: Sequence[str]) -> list[str]:
    """``args`` with a list of test corpora, ``+test_data=[emodb,ravdess]``, written out as the several test corpora
    of ``+test_data=multi`` (``test_data.name=emodb+ravdess +data@test_data.corpora.emodb=emodb …``), said on
    stdout. Hydra merges the configs of one group's list into one node, so the list cannot be a config choice; each
    member's root is then ``test_data.corpora.<name>.root``."""
    written: list[str] = []
    for arg in args:
        key, _, value = arg.lstrip("+").partition("=")
        names = [name.strip() for name in value.strip("[]").split(",") if name.strip()]
        if key != "test_data" or not (value.startswith("[") and value.endswith("]") and names):
            written.append(arg)
            continue
        members = [f"+data@test_data.corpora.{name}={name}" for name in names]
        expanded = ["+test_data=multi", f"test_data.name={'+'.join(names)}", *members]
        print(f"{arg}: {' '.join(expanded)}")
        written += expanded
    return written


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
