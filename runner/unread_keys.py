"""Every key a run receives is read by something: a mistyped or left-over key stops the run in one line.

Why a check of the composed config rather than structured configs: the configs are plain YAML whose
``_target_`` nodes are handed to ``hydra.utils.instantiate``, and the experiments compose freely on top of
the groups (``experiment=ck_visual cv=holdout``). A dataclass schema per group would repeat every target's
signature and every experiment's keys, and go stale with them. The targets' signatures are the schema already,
so ``check_overrides`` composes the config as ``train.py`` will (Hydra's compose API, before Hydra's app,
before anything is prepared, generated or written) and checks three things:

* a ``key=value`` override of a key the config lacks, which Hydra refuses with advice to append it (``+key``)
  that would then be read by nothing;
* a ``+key=value`` (or a new ``++key=value``) that is no parameter of the ``_target_`` node holding it: a key
  added outside every ``_target_`` node (``+model.audio.lr``) is read by nothing (the runner reads the keys
  ``configs/train.yaml`` and its groups compose, and no others); one added to a mapping a target takes
  (``+data.preprocess.mfcc.mean_norm=true``) is left to that target;
* every key of every ``_target_`` node is a parameter of its target (``inspect.signature`` of the object
  ``_target_`` names; a target taking ``**kwargs`` takes any key; Hydra's own ``_partial_``, ``_convert_``,
  ``_recursive_`` and ``_args_`` aside): a key one config leaves for another that is not composed (an
  experiment's ``cv.folds.k`` under ``cv=holdout``) would be a ``TypeError`` after preprocessing.

Each mistake is a ``ConfigError`` naming the key, the nearest existing keys (``difflib`` over the composed
config's dotted keys) and a command that works. Multirun command lines (``-m``, ``--cfg`` or any other flag)
are left to Hydra.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from hydra.errors import ConfigCompositionException
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig

from runner.command_line import ConfigError, override_key, train_command

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
PROJECT_PACKAGES = frozenset({"datamodules", "lightning_modules", "tracking", "callbacks", "runner"})
MISSING_KEY = re.compile(r"Could not override '([^']+)'")


def compose(config_dir: Path, config_name: str, overrides: Sequence[str]) -> DictConfig:
    """``configs/<config_name>.yaml`` composed with ``overrides``, as Hydra's app would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def dotted_keys(node: object, prefix: str = "") -> Iterator[str]:
    """Every key of ``node`` as a dotted path (``model.audio.module.lr``), mappings walked, lists not."""
    if isinstance(node, DictConfig) and not node._is_none() and not node._is_interpolation():
        for key in node.keys():
            path = f"{prefix}{key}"
            if path != "hydra":
                yield path
                yield from dotted_keys(node._get_node(key), f"{path}.")


def nearest(key: str, keys: Sequence[str]) -> str | None:
    """The key of ``keys`` most like ``key``: among those with the same last name first
    (``model.audio.lr``: ``model.audio.module.lr``)."""
    leaf = key.rpartition(".")[2]
    same_leaf = [k for k in keys if k.rpartition(".")[2] == leaf]
    for candidates in (same_leaf, keys):
        found = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
        if found:
            return found[0]
    return None


def parameters(target: str) -> set[str] | None:
    """The keyword parameters ``target`` takes; None when it takes any or cannot be imported (``instantiate``
    says why, later). A class of this project passing ``**kwargs`` on to its base class (``AudioModule`` to
    ``EmotionModule``) takes its base's parameters too; any other ``**kwargs`` takes any key."""
    try:
        obj = get_object(target)
    except (ImportError, AttributeError, ValueError):
        return None
    functions = [vars(c)["__init__"] for c in obj.__mro__ if "__init__" in vars(c)] if inspect.isclass(obj) else [obj]
    taken: set[str] = set()
    for function in functions:
        try:
            signature = inspect.signature(function)
        except (ValueError, TypeError):
            return None
        taken |= {
            name
            for name, p in signature.parameters.items()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        }
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
            return taken - {"self"}
        if getattr(function, "__module__", "").partition(".")[0] not in PROJECT_PACKAGES:
            return None
    return None


def target_nodes(node: object, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    """``(dotted path, node)`` of every ``_target_`` node under ``node``, in lists too."""
    if isinstance(node, DictConfig) and not node._is_none() and not node._is_interpolation():
        if "_target_" in node:
            yield prefix.rstrip("."), node
        for key in node.keys():
            if f"{prefix}{key}" != "hydra":
                yield from target_nodes(node._get_node(key), f"{prefix}{key}.")
    elif isinstance(node, ListConfig) and not node._is_none() and not node._is_interpolation():
        for index in range(len(node)):
            yield from target_nodes(node._get_node(index), f"{prefix}{index}.")


def replace_with(args: Sequence[str], arg: str, key: str | None, program: str) -> str:
    """``try: python <program> <args>`` with ``arg`` setting ``key`` instead, in its place, or left out (None)."""
    fixed = [f"{key}={a.partition('=')[2]}" if a == arg else a for a in args if a != arg or key]
    return train_command(fixed, {}, program)


def check_target_keys(cfg: DictConfig, args: Sequence[str], program: str) -> None:
    """A ``ConfigError`` for a key of a ``_target_`` node that its target does not take."""
    given = {override_key(arg): arg for arg in args if "=" in arg}
    for path, node in target_nodes(cfg):
        taken = parameters(str(node._get_node("_target_")._value()))
        if taken is None:
            continue
        for key in node.keys():
            if key in HYDRA_KEYS or key in taken:
                continue
            dotted = f"{path}.{key}" if path else str(key)
            target = node._get_node("_target_")._value()
            if dotted in given:
                close = difflib.get_close_matches(str(key), sorted(taken), n=1, cutoff=0.6)
                suggestion = f"{path}.{close[0]}" if close and path else (close or [None])[0]
                hint = f"did you mean {suggestion}?; " if suggestion else ""
                raise ConfigError(
                    f"{dotted}: {target} takes no {key} (it takes {', '.join(sorted(taken))}); {hint}"
                    f"{replace_with(args, given[dotted], suggestion, program)}"
                )
            raise ConfigError(
                f"{dotted}: {target} ({path}._target_) takes no {key}; a config composed here leaves it for "
                f"another choice of {path.partition('.')[0]}=; {train_command([*args, f'~{dotted}'], {}, program)}"
            )


def unread_part(cfg: DictConfig, key: str) -> tuple[str, DictConfig] | None:
    """The longest leading part of the dotted ``key`` that ``cfg`` holds and its node, when no object reads what
    is added there: None when ``cfg`` holds all of ``key``, or a part of it is null (``spec_augment``, given a
    mapping) or is or lies under a ``_target_`` node (its target's parameters, ``check_target_keys``, or the
    mapping it takes, ``data.preprocess.mfcc``, which it reads as it will)."""
    node: DictConfig = cfg
    path: list[str] = []
    for part in key.split("."):
        if node._is_none() or "_target_" in node:
            return None
        if part not in node:
            return ".".join(path), node
        child = node._get_node(part)
        if not isinstance(child, DictConfig) or child._is_interpolation():
            return None
        node = child
        path.append(part)
    return None


def check_appended(arg: str, base: DictConfig, args: Sequence[str], program: str) -> None:
    """A ``ConfigError`` for ``+key=value`` (or ``++``) adding a key that no object reads (``unread_part``;
    ``base``: the config composed without the appended keys)."""
    key = override_key(arg)
    unread = unread_part(base, key)
    if unread is None:
        return
    found, node = unread
    suggestion = nearest(key, list(dotted_keys(base)))
    hint = f"did you mean {suggestion}?; " if suggestion else ""
    raise ConfigError(
        f"{arg}: nothing reads {key} ({found or 'the top level'} holds {', '.join(map(str, node.keys()))}); "
        f"{hint}{replace_with(args, arg, suggestion, program)}"
    )


def is_group(arg: str, config_dir: Path) -> bool:
    """Whether ``arg`` picks a config of a group (``experiment=x``, ``+test_data=emodb``, ``hydra/launcher=x``)."""
    key = override_key(arg).partition("@")[0]
    return key.startswith("hydra") or (config_dir / key).is_dir()


def check_overrides(
    args: Sequence[str], config_dir: Path, config_name: str = "train", program: str = "train.py"
) -> None:
    """Compose ``config_name`` with the command line ``args`` and stop (``ConfigError``) on a key no object reads."""
    if any(arg.startswith("-") for arg in args):
        return
    groups = [arg for arg in args if is_group(arg, config_dir)]
    try:
        cfg = compose(config_dir, config_name, args)
    except ConfigCompositionException as error:
        missing = MISSING_KEY.search(str(error))
        if missing is None:
            return  # Hydra's app tells it
        key = missing.group(1)
        arg = next(a for a in args if override_key(a) == key)
        suggestion = nearest(key, list(dotted_keys(compose(config_dir, config_name, groups))))
        hint = f"did you mean {suggestion}?; " if suggestion else ""
        raise ConfigError(f"{arg}: no such key; {hint}{replace_with(args, arg, suggestion, program)}") from None
    appended = [arg for arg in args if arg.startswith("+") and not is_group(arg, config_dir)]
    if appended:
        base = compose(config_dir, config_name, [arg for arg in args if arg not in appended])
        for arg in appended:
            check_appended(arg, base, args, program)
    check_target_keys(cfg, args, program)
