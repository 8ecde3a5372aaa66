"""A run's precision preset as it really ran: the preset's name where the run is exactly that
preset, `PRESET+key=value` for each key an override changed (`nvfp4+x=e8m7`).

A run records its resolved config, with `precision.name` the preset it started from. The preset
itself is composed here from today's `configs/precision/NAME.yaml` (the `train` config with
`precision=NAME`), and the two are compared leaf by leaf on:
  - every `precision.*` key (shown relative: `x=e8m7`, `operands.dgrad_g.rounding=nearest_even`),
  - every key outside `precision` that the preset sets (msamp_o2's `optim.exp_avg_format`),
where both have the key (a key newer or older than the run is no change). A leaf the preset
writes as an interpolation of a sibling (`x: ${.format}`) is no change of its own when it
follows that sibling in the run (`precision.format=e8m7` is one change, not four).
A name that is no preset (`precision.name=mine`) is the label as it stands.

The presets of a config group are the YAML files of the installed configs folder (`preset_names`,
which the CLI's help texts and `precisionlab.presets` list); `composed_preset` is one of them as
the `train` config composes it, the node a library user's `convert_model(model, "nvfp4")` starts from.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["preset_label", "preset_changes", "preset_names", "composed_preset"]

_SIBLING = re.compile(r"^\$\{\.(\w+)\}$")  # ${.format}: the value of a sibling key


def _flat(node: Any, path: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out = {}
        for key, item in node.items():
            out.update(_flat(item, f"{path}.{key}" if path else str(key)))
        return out
    return {path: node}


def _same(a: Any, b: Any) -> bool:
    """Equal as config values: 1 == 1.0, lists element by element."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_shown(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def preset_names(group: str = "precision") -> list[str]:
    """The presets of config group `group` (precision, model, data, optim, sweep), sorted: the YAML
    files of the installed configs folder. An unknown group is a ValueError naming the groups."""
    from importlib.resources import files

    root = files("precisionlab.configs")
    groups = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))
    if group not in groups:
        raise ValueError(f"no config group {group!r}; the groups are {', '.join(groups)}")
    return sorted(p.name[:-5] for p in root.joinpath(group).iterdir() if p.name.endswith(".yaml"))


@functools.lru_cache(maxsize=None)
def _loader():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    import precisionlab.configs  # noqa: F401  (registers the schema the presets build on)

    return ConfigLoaderImpl(config_search_path=create_config_search_path("pkg://precisionlab.configs"))


def _composed(group: str, choice: str) -> Any:
    """The `train` config composed with `group=choice` (hydra.errors.HydraException: no such preset)."""
    from hydra.types import RunMode

    return _loader().load_configuration(config_name="train", overrides=[f"{group}={choice}"], run_mode=RunMode.RUN)


def composed_preset(name: str, group: str = "precision") -> dict[str, Any]:
    """The `group` node of the `train` config composed with `group=name`, as a plain dict with its
    interpolations kept (`x: ${.format}`), so an override of `format` moves the roles that follow it.
    An unknown name is a ValueError listing the presets."""
    from omegaconf import OmegaConf

    names = preset_names(group)
    if name not in names:
        raise ValueError(f"unknown {group} preset {name!r}; the presets are {', '.join(names)}")
    return OmegaConf.to_container(_composed(group, name)[group], resolve=False)


@functools.lru_cache(maxsize=None)
def _preset(name: str) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The preset `name` as flat leaves (resolved) on the keys it owns, and its sibling
    interpolations (leaf -> the leaf it follows); None if there is no such preset."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    def composed(choice: str) -> tuple[dict[str, Any], dict[str, Any]]:
        cfg = _composed("precision", choice)
        keys = [k for k in cfg if k != "hydra"]
        resolved = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                    for k in keys}
        raw = {k: OmegaConf.to_container(cfg[k], resolve=False) if OmegaConf.is_config(cfg[k]) else cfg[k]
               for k in keys}
        return _flat(resolved), _flat(raw)

    if not re.fullmatch(r"[\w.-]+", name):
        return None
    try:
        mine, raw = composed(name)
        plain, _ = composed("fp32")
    except HydraException:  # MissingConfigException: no preset of that name
        return None
    owned = {k: v for k, v in mine.items()
             if k.startswith("precision.") or k not in plain or not _same(plain[k], v)}
    follows = {}
    for key in owned:
        match = _SIBLING.match(str(raw.get(key, "")))
        if match:
            follows[key] = key.rsplit(".", 1)[0] + "." + match.group(1)
    return owned, follows


def preset_changes(config: Mapping[str, Any]) -> list[str] | None:
    """`key=value` for each key where the run's config differs from its preset's (module
    docstring); None where the run names no preset (`precision.name` absent, or no such preset)."""
    name = (config.get("precision") or {}).get("name") if isinstance(config, Mapping) else None
    preset = _preset(str(name)) if name is not None else None
    if preset is None:
        return None
    owned, follows = preset
    run = _flat(config)
    changes = []
    for key, value in owned.items():
        if key == "precision.name" or key not in run or _same(run[key], value):
            continue
        source = follows.get(key)
        if source is not None and source in run and _same(run[key], run[source]):
            continue  # follows its sibling, as in the preset: that sibling's change says it
        shown = key[len("precision."):] if key.startswith("precision.") else key
        changes.append(f"{shown}={_shown(run[key])}")
    return changes


def preset_label(config: Mapping[str, Any]) -> str | None:
    """The run's preset: its name, with `+key=value` for each change (`nvfp4+x=e8m7`); the name
    as it stands where it is no preset; None where the config names none."""
    name = (config.get("precision") or {}).get("name") if isinstance(config, Mapping) else None
    if name is None:
        return None
    changes = preset_changes(config)
    return "+".join([str(name), *(changes or [])])
