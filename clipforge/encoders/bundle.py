"""The model bundle: `bundle.json` + `model.safetensors` (open_clip key names). See DESIGN.md."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from clipforge.encoders.backends import Encoder, OnnxEncoder, TorchEncoder
from clipforge.encoders.device import resolve_device, resolve_precision
from clipforge.encoders.images import decode_image, draft_size, load_image
from clipforge.encoders.jsonfile import read_format_json
from clipforge.encoders.model import (
    MAX_LOGIT_SCALE,
    WeightsMismatch,
    build_model,
    get_tokenizer,
    image_transform,
    load_weights,
    preprocess_cfg,
    tokenizer_cfg,
)
from clipforge.encoders.pixels import ImagePrep
from clipforge.encoders.text import one_line
from clipforge.encoders.tokenizer import Tokenizer

BUNDLE_FORMAT = "clipforge-bundle/1"
WEIGHTS = "model.safetensors"
META = "bundle.json"
ONNX_DIR = "onnx"


class BundleError(ValueError):
    """A bundle is missing, malformed or does not match its recorded fingerprint."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    try:
        from importlib.metadata import version

        return version("clipforge")
    except Exception:  # running from a source tree without installing
        return "unknown"


def swap_in(tmp: Path, final: Path) -> None:
    """Put the finished directory `tmp` at `final`, replacing what is there with two renames."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_bundle(
    model: torch.nn.Module,
    out_dir: str | Path,
    *,
    arch: str,
    model_cfg: dict[str, Any],
    loss: str = "clip",
    provenance: dict[str, Any] | None = None,
    preprocess: dict[str, Any] | None = None,
) -> str:
    """Write a bundle atomically (temp dir + rename) and return its fingerprint (weights sha256)."""
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / META).is_file())):
        raise BundleError(f"{out} exists and is not a clipforge bundle (nor empty): refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise BundleError(f"{len(bad)} weight tensor(s) hold NaN or infinity (e.g. {bad[0]}): not saving a bundle")
    logit_bias = state.get("logit_bias")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700: a bundle must be readable by e.g. a container's user
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": BUNDLE_FORMAT})
        fingerprint = sha256_file(tmp / WEIGHTS)
        meta = {
            "format": BUNDLE_FORMAT,
            "arch": arch,
            "model_cfg": model_cfg,
            "tokenizer": tokenizer_cfg(model_cfg),
            "preprocess": preprocess or preprocess_cfg(model_cfg),
            "loss": loss,
            "logit_scale": float(state["logit_scale"].exp().item()),
            "logit_bias": None if logit_bias is None else float(logit_bias.item()),
            "provenance": {"code_version": code_version(), **(provenance or {})},
            "weights_sha256": fingerprint,
        }
        (tmp / META).write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():  # safetensors writes 0600 files
            os.chmod(f, 0o666 & ~umask)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fingerprint


META_SHAPE = {"model_cfg": dict, "tokenizer": dict, "preprocess": dict, "weights_sha256": str}


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / META
    if not path.is_dir() or not meta_path.is_file():
        raise BundleError(f"{path} is not a clipforge bundle (no {META})")
    return read_format_json(meta_path, BUNDLE_FORMAT, META_SHAPE, tuple(META_SHAPE), BundleError, "bundle")


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """bundle.json, once the weights are there and their sha256 equals its fingerprint; else BundleError."""
    path = Path(path)
    meta = read_bundle_meta(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{path}: missing {WEIGHTS}")
    if sha256_file(weights) != meta["weights_sha256"]:
        raise BundleError(f"{path}: {WEIGHTS} does not match the recorded weights_sha256 (corrupt or edited)")
    return meta


@dataclass
class Bundle:
    """A loaded bundle: an `Encoder` (torch or ONNX Runtime) plus tokenizer, preprocessing and `bundle.json`."""

    path: Path
    meta: dict[str, Any]
    encoder: Encoder
    tokenizer: Tokenizer
    device: torch.device
    precision: str
    transform: Any = field(repr=False)
    backend: str = "torch"
    _model: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        return str(self.meta["weights_sha256"])

    @property
    def embed_dim(self) -> int:
        return int(self.meta["model_cfg"]["embed_dim"])

    @property
    def loss(self) -> str:
        return str(self.meta.get("loss", "clip"))

    @property
    def model(self) -> torch.nn.Module:
        """The torch model, in eval mode on `device`: the torch backend's own, or built from the weights on first
        use when ONNX Runtime encodes (exporting and converting need it; serving does not)."""
        if self._model is None:
            self._model = read_model(self.path, self.meta).to(self.device).eval()
        return self._model

    @functools.cached_property
    def image_prep(self) -> ImagePrep:
        """Image bytes -> prepared pixels, as the service prepares them (encoders/pixels.py)."""
        return ImagePrep(self.meta["preprocess"])

    def preprocess(self, images: list[Any]) -> torch.Tensor:
        """PIL images (RGB) -> normalised tensor [N, 3, H, W]."""
        return torch.stack([self.transform(im) for im in images])

    def load_image(self, source: bytes | str | Path, **kw: Any) -> Any:
        return load_image(source, draft_size=draft_size(self.meta["preprocess"]), **kw)

    def decode_image(self, source: bytes | str | Path, **kw: Any) -> tuple[Any, tuple[int, int]]:
        """(RGB image, the stored image's displayed (width, height))."""
        return decode_image(source, draft_size=draft_size(self.meta["preprocess"]), **kw)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> L2-normalised fp32 features [N, D]."""
        return self.encoder.encode_images(pixels)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """list of N strings -> L2-normalised fp32 features [N, D]."""
        return self.encoder.encode_texts(texts)

    def logit_scale(self) -> float:
        """The temperature recorded in bundle.json at save time, clamped as the loss applies it."""
        recorded = self.meta.get("logit_scale")
        if not isinstance(recorded, int | float):  # not written by save_bundle: ask the weights
            return float(self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE).item())  # type: ignore[operator]
        return min(float(recorded), MAX_LOGIT_SCALE)


def read_model(path: Path, meta: dict[str, Any]) -> torch.nn.Module:
    """Build the architecture in `meta` and load the bundle's weights into it, or raise BundleError."""
    model = build_model(meta["model_cfg"], init_logit_bias=0.0 if meta.get("logit_bias") is not None else None)
    try:
        state = load_file(str(path / WEIGHTS))
    except Exception as exn:  # safetensors raises its own error types for truncated files
        raise BundleError(f"{path}: cannot read {WEIGHTS}: {one_line(exn)}") from exn
    try:
        return load_weights(model, state, str(path / WEIGHTS))
    except WeightsMismatch as exn:
        raise BundleError(str(exn)) from exn


def _torch_encoder(path: Path, meta: dict[str, Any], tokenizer: Tokenizer, dev: torch.device, prec: str) -> Encoder:
    return TorchEncoder(read_model(path, meta).to(dev).eval(), tokenizer, dev, prec)


def _onnx_encoder(path: Path, meta: dict[str, Any], tokenizer: Tokenizer, dev: torch.device, prec: str) -> Encoder:
    onnx_dir = path / ONNX_DIR
    if not (onnx_dir / "onnx.json").is_file():
        raise BundleError(f"{path}: no ONNX graphs; run `clipforge bundle export {path} --onnx` first")
    try:
        # as many intra-op threads as torch is set to use: a server that limits torch's threads limits these too
        return OnnxEncoder(onnx_dir, tokenizer, meta["weights_sha256"], threads=torch.get_num_threads())
    except ImportError as exn:
        raise BundleError("the onnx backend needs onnxruntime: pip install 'clipforge[onnx]'") from exn
    except Exception as exn:  # onnxruntime's own errors for a corrupt or truncated graph
        reason = one_line(exn)
        raise BundleError(f"{path}: cannot load the ONNX graphs in {onnx_dir}: {reason}") from exn


EncoderLoader = Callable[[Path, dict[str, Any], Tokenizer, torch.device, str], Encoder]
BACKENDS: dict[str, EncoderLoader] = {"torch": _torch_encoder, "onnx": _onnx_encoder}
BACKEND_CHOICES = ("auto", *BACKENDS)


def load_bundle(
    path: str | Path, *, device: str = "auto", precision: str = "auto", verify: bool = True, backend: str = "auto"
) -> Bundle:
    """Load a bundle; with `verify`, the weights' sha256 must equal the recorded fingerprint.

    backend: "torch"; "onnx" (ONNX Runtime on CPU; needs `clipforge bundle export --onnx` first; builds no torch
    model); or "auto": ONNX Runtime when the bundle has ONNX graphs and the device is the CPU, else torch. A
    graph that fails to load under "auto" falls back to the torch weights with a warning: the fingerprint
    covers the weights, not the graphs.
    """
    if backend not in BACKEND_CHOICES:
        raise BundleError(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
    path = Path(path)
    meta = verify_bundle(path) if verify else read_bundle_meta(path)
    if not (path / WEIGHTS).is_file():
        raise BundleError(f"{path}: missing {WEIGHTS}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev, training=False)
    tok_cfg = dict(meta["tokenizer"])
    if tok_cfg["name"].startswith("bundle:"):  # a tokenizer shipped inside the bundle directory
        tok_cfg["name"] = str(path / tok_cfg["name"].removeprefix("bundle:"))
    tokenizer = get_tokenizer(tok_cfg)
    name = backend
    if backend == "auto":
        name = "onnx" if dev.type == "cpu" and (path / ONNX_DIR / "onnx.json").is_file() else "torch"
    try:
        encoder = BACKENDS[name](path, meta, tokenizer, dev, prec)
    except BundleError as exn:
        if backend != "auto" or name == "torch":
            raise
        warnings.warn(f"{exn}; using the torch weights instead", RuntimeWarning, stacklevel=2)
        name, encoder = "torch", _torch_encoder(path, meta, tokenizer, dev, prec)
    return Bundle(
        path=path,
        meta=meta,
        encoder=encoder,
        tokenizer=tokenizer,
        device=dev,
        precision=prec,
        transform=image_transform(meta["preprocess"], train=False),
        backend=name,
        _model=encoder.model if isinstance(encoder, TorchEncoder) else None,
    )
