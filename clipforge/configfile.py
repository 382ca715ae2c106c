"""Configs as data, shared by `clipforge train` and `clipforge fuse`: a frozen dataclass is the schema, a YAML
preset (a shipped name or a path) fills it, `--set a.b=value` overrides it (values parsed as YAML), types are
checked and unknown keys refused, and minimum values are checked before anything runs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(tp, value, f"{where}.")
    if origin is tuple:
        (item_tp, *_rest) = get_args(tp)
        items = [value] if isinstance(value, str | int | float) else list(value or [])
        return tuple(_coerce(item_tp, v, f"{where}[]") for v in items)
    if origin is not None and type(None) in get_args(tp):  # Optional[X]
        if value is None:
            return None
        inner = [a for a in get_args(tp) if a is not type(None)][0]
        return _coerce(inner, value, where)
    if tp is float and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        quote = tp is str and isinstance(value, bool)  # `labels: [no, yes]` in YAML 1.1 is [False, True]
        hint = " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)" if quote else ""
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}{hint}")
    return value


def build(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """`cls(**data)` with every value checked against its annotation, nested sections built recursively."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]  # T is a dataclass
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(f'{where}{k}' for k in unknown)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exn:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(exn).split())})") from None


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    node[keys[-1]] = value


def resolve_preset(name_or_path: str, preset_dir: Path, what: str = "presets") -> Path:
    """A path to a YAML file, or the name of one shipped in `preset_dir`."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = preset_dir / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    names = ", ".join(sorted(p.stem for p in preset_dir.glob("*.yaml")))
    raise ConfigError(f"no config file {name_or_path!r} (shipped {what}: {names})")


def read_tree(name_or_path: str | None, overrides: Sequence[str], preset_dir: Path, what: str) -> dict[str, Any]:
    """The preset's YAML as a tree with the `a.b=value` overrides applied."""
    tree: dict[str, Any] = {}
    if name_or_path:
        path = resolve_preset(name_or_path, preset_dir, what)
        tree = parse_yaml(path.read_text(), str(path))
        if tree is None:  # an empty file: almost surely the wrong file, not a wish for every default
            raise ConfigError(f"{path}: the config file is empty")
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        set_path(tree, key.strip(), parse_yaml(raw, f"--set {item}"))
    return tree


def check_minimums(tree: Mapping[str, Any], minimum: Mapping[str, float]) -> None:
    """Each `section.key` at least its minimum (anything less would divide by zero or run zero steps)."""
    for dotted, low in minimum.items():
        section, key = dotted.split(".")
        if tree[section][key] < low:
            raise ConfigError(f"{dotted} must be at least {low}, got {tree[section][key]}")


def save_yaml(cfg: Any, path: str | Path) -> None:
    """The resolved config of a run, as YAML (tuples as lists)."""
    Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=False))
