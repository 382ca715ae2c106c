"""Build open_clip encoders from an architecture name, a shipped config or a JSON file."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transform import PreprocessCfg, image_transform_v2

from clipforge.encoders.tokenizer import Tokenizer

CONFIG_DIR = Path(__file__).parent / "configs"
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
MAX_LOGIT_SCALE = 100.0  # the loss clamps exp(logit_scale) here (CLIP's limit); a bundle reports it clamped


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def resolve_model_config(spec: str) -> tuple[str, dict[str, Any]]:
    """Return (arch name, open_clip model config) for a shipped name, an open_clip name or a JSON path."""
    path = Path(spec)
    if spec.endswith(".json") and path.is_file():
        return path.stem, json.loads(path.read_text())
    shipped = CONFIG_DIR / f"{spec}.json"
    if shipped.is_file():
        return spec, json.loads(shipped.read_text())
    cfg = open_clip.get_model_config(spec)
    if cfg is None:
        known = ", ".join(shipped_configs()) + ", or any of open_clip.list_models()"
        raise ValueError(f"unknown architecture {spec!r}: expected a JSON config path, {known}")
    return spec, copy.deepcopy(cfg)


def build_model(model_cfg: dict[str, Any], *, init_logit_bias: float | None = None) -> CLIP | CustomTextCLIP:
    """A randomly initialised open_clip model (CLIP or CustomTextCLIP) for `model_cfg`.

    Keeps open_clip's own module names, so its state dict loads into `open_clip.create_model`.
    """
    cfg = copy.deepcopy(model_cfg)
    if "multimodal_cfg" in cfg:
        raise ValueError("CoCa-style models (multimodal_cfg) are not supported")
    custom_text = bool(cfg.pop("custom_text", False)) or "hf_model_name" in cfg.get("text_cfg", {})
    cfg.pop("init_logit_bias", None)
    cls = CustomTextCLIP if custom_text else CLIP
    if custom_text:
        # never download base text weights at build time: a bundle's weights come from its own file
        cfg.setdefault("text_cfg", {})["hf_model_pretrained"] = False
    model = cls(**cfg, init_logit_scale=INIT_LOGIT_SCALE, init_logit_bias=init_logit_bias, output_dict=True)
    return model


def preprocess_cfg(model_cfg: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The image preprocessing settings a bundle records (open_clip's PreprocessCfg fields)."""
    size = model_cfg["vision_cfg"].get("image_size", 224)
    base = PreprocessCfg(size=size)
    out = {
        "image_size": size,
        "mean": list(base.mean),
        "std": list(base.std),
        "interpolation": base.interpolation,
        "resize_mode": base.resize_mode,
    }
    out.update(model_cfg.get("preprocess_cfg", {}) or {})
    out.update(overrides or {})
    return out


def image_transform(pp: dict[str, Any], *, train: bool, aug: dict[str, Any] | None = None) -> Any:
    """open_clip's transform for these settings (eval: resize + centre crop; train: random resized crop)."""
    cfg = PreprocessCfg(
        size=pp["image_size"],
        mean=tuple(pp["mean"]),
        std=tuple(pp["std"]),
        interpolation=pp["interpolation"],
        resize_mode=pp["resize_mode"],
    )
    return image_transform_v2(cfg, is_train=train, aug_cfg=aug)


Preprocess = Callable[[list[Any]], torch.Tensor]  # RGB PIL images -> normalised pixels [N, 3, H, W]


def eval_preprocess(pp: dict[str, Any]) -> Preprocess:
    """The eval transform for these settings applied to a list of images, stacked (as `Bundle.preprocess`)."""
    transform = image_transform(pp, train=False)
    return lambda images: torch.stack([transform(im) for im in images])


def tokenizer_cfg(model_cfg: dict[str, Any]) -> dict[str, Any]:
    text_cfg = model_cfg.get("text_cfg", {})
    name = text_cfg.get("hf_tokenizer_name") or "clip-bpe"
    return {"name": name, "context_length": int(text_cfg.get("context_length", 77))}


def get_tokenizer(tok_cfg: dict[str, Any]) -> Tokenizer:
    return Tokenizer(tok_cfg["name"], tok_cfg["context_length"])


class WeightsMismatch(ValueError):
    """Weights that do not fit an architecture: keys missing, unexpected or of another shape."""


def weights_format(path: str | Path) -> str | None:
    """What a weights file's first bytes say it is: "safetensors", "torch" (a zip archive or a legacy pickle),
    or None (neither: a text file, an image, ...). The loaders' own errors for such files say nothing useful
    (torch.load of a text file raises KeyError: '101')."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip archive, or a pickle (protocol >= 2)
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:  # u64 header size + JSON
        return "safetensors"
    return None


def key_summary(label: str, keys: list[str], show: int = 3) -> str:
    """'2 missing (a, b)' / '40 unexpected (a, b, c, and 37 more)': a key list in one short phrase."""
    more = f", and {len(keys) - show} more" if len(keys) > show else ""
    return f"{len(keys)} {label} ({', '.join(keys[:show])}{more})"


def state_dict_mismatch(model: torch.nn.Module, state: dict[str, Any], show: int = 3) -> str:
    """'' when `state` loads into `model` exactly; else one line naming the first few missing, unexpected and
    mis-shaped keys with their counts (instead of PyTorch's message listing every key)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("attn_mask")]  # a buffer open_clip rebuilds
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)
    ]
    groups = (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
    return "; ".join(key_summary(label, keys, show) for label, keys in groups if keys)


def load_weights(model: torch.nn.Module, state: dict[str, Any], where: str) -> torch.nn.Module:
    """Load `state` into `model`, or raise WeightsMismatch with `state_dict_mismatch`'s one line."""
    problem = state_dict_mismatch(model, state)
    if problem:
        raise WeightsMismatch(f"{where} does not fit the architecture: {problem}")
    model.load_state_dict(state, strict=False)  # strict=False: only the rebuilt attn_mask may be absent
    return model
