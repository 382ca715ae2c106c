"""A fusion head on disk and in memory: a folder with `head.safetensors` + `head.json`.

`load_head(path, fingerprint)` is what the service calls; `Head.predict(image_features, text_features)`
maps L2-normalised embeddings [N, D] of a frozen bundle to probabilities [N, C]. A head only means
something on the bundle it was trained on, so loading it for another bundle is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from clipforge.encoders.bundle import sha256_file, swap_in
from clipforge.encoders.jsonfile import json_text
from clipforge.fusion.kinds import Fusion, build_fusion

HEAD_FORMAT = "clipforge-head/1"
WEIGHTS = "head.safetensors"
META = "head.json"
TASKS = ("binary", "multiclass", "multilabel")
# a head's name is a URL path segment (/v1/heads/{name}); fullmatch it: a "$" would admit a final newline
HEAD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class HeadError(ValueError):
    """A head folder is missing, corrupt, or belongs to another bundle (one-line message)."""


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """Logits [N, out] -> probabilities [N, C]. binary: one logit -> [p(neg), p(pos)]."""
    if task == "multiclass":
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)
    p = np.exp(-np.logaddexp(0, -logits)).astype(np.float32)  # sigmoid, stable
    return np.concatenate([1 - p, p], -1) if task == "binary" else p


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {arr.shape}")
    return arr


class Head:
    """A loaded fusion head. `predict` runs in numpy by default (no torch dispatch per call: faster for the
    small batches a service sees; see benchmarks/fusion_bench.py); `backend="torch"` runs the module."""

    def __init__(self, module: Fusion, meta: dict[str, Any], path: Path | None = None, backend: str = "numpy"):
        self.module = module.eval()
        self.meta = meta
        self.path = path
        self.name: str = str(meta.get("name") or (path.name if path else module.kind))
        self.kind: str = module.kind
        self.task: str = meta["task"]
        self.labels: list[str] = list(meta["labels"])
        self.bundle_fingerprint: str = meta["bundle_fingerprint"]
        self.metrics: dict[str, Any] = dict(meta.get("metrics") or {})
        self.dim: int = module.dim
        self.backend = backend
        self._np = module.numpy_params()

    def logits(self, image_features: Any, text_features: Any) -> np.ndarray:
        zi, zt = _as_numpy(image_features, "image_features"), _as_numpy(text_features, "text_features")
        if zi.shape != zt.shape or zi.shape[1] != self.dim:
            raise ValueError(
                f"expected image and text features of shape [N, {self.dim}], got {zi.shape} and {zt.shape}"
            )
        if self.backend == "torch":
            with torch.inference_mode():
                return self.module(torch.from_numpy(zi), torch.from_numpy(zt)).numpy()
        return self.module.numpy_forward(self._np, zi, zt)

    def predict(self, image_features: Any, text_features: Any) -> np.ndarray:
        """[N, D] x2 (float32, L2-normalised; numpy or torch) -> probabilities [N, len(labels)] float32."""
        return probabilities(self.logits(image_features, text_features), self.task)

    def answers(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """Each row of `predict`'s output as the service answers it: {"probabilities": {label: p}, "top": label}
        and, for a binary head, "p" (the positive label's probability)."""
        out: list[dict[str, Any]] = []
        for row in probs:
            a: dict[str, Any] = {"probabilities": {label: float(row[j]) for j, label in enumerate(self.labels)}}
            a["top"] = self.labels[int(row.argmax())]
            if self.task == "binary":
                a["p"] = float(row[1])
            out.append(a)
        return out

    def __repr__(self) -> str:
        return f"Head({self.name!r}, kind={self.kind}, task={self.task}, labels={len(self.labels)}, dim={self.dim})"


def save_head(
    path: str | Path,
    module: Fusion,
    *,
    task: str,
    labels: list[str],
    bundle_fingerprint: str,
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    name: str | None = None,
) -> Path:
    """Write a head folder atomically (temp folder + rename); refuses to replace a folder that is not a head."""
    out = Path(path)
    if task not in TASKS:
        raise HeadError(f"task must be one of {TASKS}, got {task!r}")
    if len(labels) != (2 if task == "binary" else module.out):
        raise HeadError(f"{len(labels)} labels for a {task} head with {module.out} output(s)")
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / META).is_file())):
        raise HeadError(f"{out} exists and is not a clipforge head (nor empty): refusing to replace it")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}
    if not all(bool(torch.isfinite(v).all()) for v in state.values()):
        raise HeadError("the head's weights hold NaN or infinity: not saving it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": HEAD_FORMAT})
        meta = {
            "format": HEAD_FORMAT,
            "name": name or out.name,
            "kind": module.kind,
            "module": module.config(),
            "task": task,
            "labels": list(labels),
            "bundle_fingerprint": bundle_fingerprint,
            "n_params": module.n_params(),
            "metrics": metrics or {},
            "provenance": provenance or {},
            "weights_sha256": sha256_file(tmp / WEIGHTS),
        }
        (tmp / META).write_text(json_text(meta, indent=2, default=str))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def head_dir(path: str | Path) -> Path:
    """A head folder, or a `fuse train` run folder holding one in head/ (what `fuse train` prints)."""
    p = Path(path)
    return p / "head" if not (p / META).is_file() and (p / "head" / META).is_file() else p


def read_head_meta(path: str | Path) -> dict[str, Any]:
    path = head_dir(path)
    if not (path / META).is_file():
        raise HeadError(f"{path} is not a clipforge head (no {META})")
    try:
        meta = json.loads((path / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exn:
        raise HeadError(f"{path / META} is not valid JSON: {' '.join(str(exn).split())}") from None
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise HeadError(f"{path}: unsupported head format {found!r}, expected {HEAD_FORMAT}")
    shape = {"kind": str, "module": dict, "task": str, "labels": list, "bundle_fingerprint": str}
    for key, tp in shape.items():
        if not isinstance(meta.get(key), tp):
            raise HeadError(f"{path / META}: {key!r} should be {tp.__name__}: corrupt or not written by clipforge")
    for key in ("provenance", "metrics"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise HeadError(f"{path / META}: {key!r} should be an object: corrupt or not written by clipforge")
    if meta["task"] not in TASKS:
        raise HeadError(f"{path / META}: unknown task {meta['task']!r}")
    return meta


def load_head(path: str | Path, fingerprint: str | None = None, backend: str = "numpy") -> Head:
    """Load a head folder (or a `fuse train` run folder); with `fingerprint` (the serving bundle's), a head of
    another bundle is refused."""
    path = head_dir(path)
    meta = read_head_meta(path)
    if fingerprint is not None and meta["bundle_fingerprint"] != fingerprint:
        raise HeadError(
            f"{path}: head was trained on bundle {meta['bundle_fingerprint'][:12]}, not on the loaded bundle "
            f"{fingerprint[:12]}: retrain it with `clipforge fuse train` on this bundle"
        )
    weights = path / WEIGHTS
    if not weights.is_file():
        raise HeadError(f"{path}: missing {WEIGHTS}")
    if meta.get("weights_sha256") and sha256_file(weights) != meta["weights_sha256"]:
        raise HeadError(f"{path}: {WEIGHTS} does not match the recorded weights_sha256 (corrupt or edited)")
    try:
        module = build_fusion(meta["kind"], **meta["module"])
        state = load_file(str(weights))
        module.load_state_dict(state, strict=True)
    except HeadError:
        raise
    except Exception as exn:  # unknown kind, bad widths, a truncated or mismatched weights file
        raise HeadError(
            f"{path}: cannot rebuild the {meta['kind']!r} head: {' '.join(str(exn).split())[:200]}"
        ) from None
    n_labels = 2 if meta["task"] == "binary" else module.out
    if len(meta["labels"]) != n_labels:
        raise HeadError(f"{path / META}: {len(meta['labels'])} labels for {n_labels} outputs")
    return Head(module, meta, path, backend=backend)
