"""Reading (and writing) the small JSON files clipforge writes beside its data (bundle.json, an index's
manifest, a head's head.json and a comparison's compare.json)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def json_text(value: Any, **kw: Any) -> str:
    """`json.dumps` with NaN and infinities written as null: Python writes a bare `NaN` (an undefined AUROC,
    say), which is not JSON, and other readers (browsers, jq, Go, JavaScript) refuse the whole file."""
    return json.dumps(_finite(value), allow_nan=False, **kw)


def read_json(path: Path, error: type[Exception]) -> Any:
    """The JSON value at `path`, or `error` with one line."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exn:
        raise error(f"{path} is not valid JSON: {exn}") from exn


def read_json_object(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The JSON object at `path`, or `error` with one line: not JSON, or JSON but not an object."""
    value = read_json(path, error)
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, found a {type(value).__name__}")
    return value


def read_format_json(
    path: Path, fmt: str, shape: Mapping[str, type], required: tuple[str, ...], error: type[Exception], what: str
) -> dict[str, Any]:
    """The JSON object at `path`, or `error` with one line: not JSON, not `{"format": fmt, ...}`, a key of
    `shape` holding another type (a bool is not an int), or a `required` key missing."""
    value = read_json(path, error)
    if not isinstance(value, dict) or value.get("format") != fmt:
        found = value.get("format") if isinstance(value, dict) else type(value).__name__
        raise error(f"{path}: unsupported {what} format {found!r}, expected {fmt}")
    for key, kind in shape.items():
        if key in value and (not isinstance(value[key], kind) or (isinstance(value[key], bool) and kind is not bool)):
            raise error(f"{path}: {key!r} should be {kind.__name__}, not {type(value[key]).__name__}: corrupt")
    for key in required:
        if key not in value:
            raise error(f"{path}: {key!r} is missing: corrupt or not written by clipforge")
    return value
