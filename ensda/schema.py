"""Config building blocks shared by every layer: the strict, frozen pydantic base, the
config error and its one formatter, YAML input, ``--set`` overrides and flattening.

A config section subclasses ``Strict``: unknown keys and wrong types fail on load, and
``format_errors`` names each offending field (``obs.density: Input should be less than or
equal to 1``). The experiment schema that composes the sections is ``ensda.config``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base of every config section: unknown keys forbidden, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def format_errors(
    title: str,
    err: pydantic.ValidationError,
    prefix: tuple[str, ...] = (),
    tags: dict[str, tuple[str, ...]] | None = None,
) -> str:
    """``title:`` then one line ``loc: message`` per error of ``err``; ``prefix`` is put
    before each location, the union tags in ``tags`` (section -> tag names) are left out of
    it, and a message that names its own field is not prefixed again."""
    lines = [f"{title}:"]
    for e in err.errors():
        parts = [*prefix, *(str(p) for p in e["loc"])]
        if len(parts) > 1 and parts[1] in (tags or {}).get(parts[0], ()):
            del parts[1]  # the union tag (testbed.sphere.levels -> testbed.levels)
        loc = ".".join(parts)
        msg = e["msg"].removeprefix("Value error, ")
        named = not loc or msg.startswith(loc + ".")
        lines.append(f"  {msg}" if named else f"  {loc}: {msg}")
    return "\n".join(lines)


class ConfigError(ValueError):
    """A config that failed to load or validate; the message names the fields."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set has an empty key part in {item!r}")
    try:
        return path, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        where = getattr(err, "problem", None) or "unparsable"
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({where})") from None


def set_value(data: dict, key: str, value: Any) -> dict:
    """A copy of the nested dict ``data`` with the dotted ``key`` set (sub-dicts created)."""
    out = copy.deepcopy(data)
    path = key.split(".")
    if not all(path):
        raise ConfigError(f"empty key part in {key!r}")
    node = out
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{key}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value
    return out


def set_values(data: dict, values: dict[str, Any]) -> dict:
    """``set_value`` for every dotted key of ``values``, in order."""
    for key, value in values.items():
        data = set_value(data, key, value)
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys in a nested dict (creating sub-dicts); returns a new dict."""
    out = data
    for item in overrides:
        path, value = parse_override(item)
        try:
            out = set_value(out, ".".join(path), value)
        except ConfigError as err:
            raise ConfigError(f"--set {item!r}: {err}") from None
    return out


def read_yaml(path: str | Path) -> dict:
    """The top-level mapping of a YAML config file (``ConfigError`` if missing or not a mapping)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a config file (e.g. {path}/<name>.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def flatten(cfg: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"obs.density": 0.25, ...} (for MLflow params)."""
    data = cfg.model_dump() if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
