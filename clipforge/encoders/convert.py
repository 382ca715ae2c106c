"""Bundles in and out: open_clip checkpoints, Hugging Face CLIP directories, open_clip and ONNX exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from clipforge.encoders.bundle import Bundle, load_bundle, save_bundle, swap_in
from clipforge.encoders.jsonfile import read_json_object
from clipforge.encoders.model import (
    WeightsMismatch,
    build_model,
    key_summary,
    load_weights,
    preprocess_cfg,
    resolve_model_config,
    weights_format,
)
from clipforge.encoders.text import one_line

ONNX_DIR = "onnx"
ONNX_FILES = {"image_encoder.onnx", "text_encoder.onnx", "onnx.json"}


def import_open_clip(arch: str, weights: str | Path, out: str | Path, *, quick_gelu: bool = False) -> str:
    """An open_clip architecture + a weights file (.safetensors, .bin/.pt state dict) -> bundle; returns fingerprint.

    Torch files are read with weights_only=True; TorchScript archives (OpenAI's original .pt) are refused:
    use open_clip's converted weights for the `openai` tags instead (same numbers, a plain state dict).
    """
    from open_clip.factory import load_state_dict

    name, cfg = resolve_model_config(arch)
    if quick_gelu or name.endswith("-quickgelu"):
        cfg["quick_gelu"] = True
    if weights_format(weights) is None:  # missing, a directory or unreadable: the OSError says which
        raise ValueError(f"{weights} is neither a safetensors nor a PyTorch weights file (by its first bytes)")
    try:
        state = load_state_dict(str(weights), weights_only=True)
    except Exception as exn:
        reason = one_line(exn)
        raise ValueError(
            f"cannot read {weights} as a state dict (safetensors or weights-only torch file): {reason}"
        ) from exn
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{weights} is not a state dict of tensors")
    model = build_model(cfg, init_logit_bias=0.0 if "logit_bias" in state else None)
    load_weights(model, state, f"{weights} ({arch})")
    return save_bundle(
        model,
        out,
        arch=name,
        model_cfg=cfg,
        loss="siglip" if "logit_bias" in state else "clip",
        provenance={"imported_from": str(weights), "format": "open_clip"},
    )


def hf_clip_config(hf: dict[str, Any]) -> dict[str, Any]:
    v, t = hf["vision_config"], hf["text_config"]
    return {
        "embed_dim": hf["projection_dim"],
        "quick_gelu": v.get("hidden_act", "quick_gelu") == "quick_gelu",
        "vision_cfg": {
            "image_size": v["image_size"],
            "patch_size": v["patch_size"],
            "width": v["hidden_size"],
            "layers": v["num_hidden_layers"],
            "head_width": v["hidden_size"] // v["num_attention_heads"],
            "mlp_ratio": v["intermediate_size"] / v["hidden_size"],
        },
        "text_cfg": {
            "context_length": t["max_position_embeddings"],
            "vocab_size": t["vocab_size"],
            "width": t["hidden_size"],
            "heads": t["num_attention_heads"],
            "layers": t["num_hidden_layers"],
            "mlp_ratio": t["intermediate_size"] / t["hidden_size"],
        },
    }


def _hf_block(src: dict[str, torch.Tensor], hf: str, oc: str, out: dict[str, torch.Tensor]) -> None:
    a = f"{hf}.self_attn"
    out[f"{oc}.attn.in_proj_weight"] = torch.cat([src[f"{a}.{p}_proj.weight"] for p in "qkv"])
    out[f"{oc}.attn.in_proj_bias"] = torch.cat([src[f"{a}.{p}_proj.bias"] for p in "qkv"])
    for hf_name, oc_name in (
        ("self_attn.out_proj", "attn.out_proj"),
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    ):
        for p in ("weight", "bias"):
            out[f"{oc}.{oc_name}.{p}"] = src[f"{hf}.{hf_name}.{p}"]


def hf_clip_to_open_clip(src: dict[str, torch.Tensor], layers_v: int, layers_t: int) -> dict[str, torch.Tensor]:
    """transformers CLIPModel state dict -> open_clip CLIP state dict (same numbers, open_clip's key names)."""
    out: dict[str, torch.Tensor] = {
        "logit_scale": src["logit_scale"],
        "token_embedding.weight": src["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": src["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": src["text_model.final_layer_norm.weight"],
        "ln_final.bias": src["text_model.final_layer_norm.bias"],
        "text_projection": src["text_projection.weight"].T.contiguous(),  # [width, D]
        "visual.class_embedding": src["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": src["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": src["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": src["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": src["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": src["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": src["vision_model.post_layernorm.bias"],
        "visual.proj": src["visual_projection.weight"].T.contiguous(),  # [width, D]
    }
    for i in range(layers_t):
        _hf_block(src, f"text_model.encoder.layers.{i}", f"transformer.resblocks.{i}", out)
    for i in range(layers_v):
        _hf_block(src, f"vision_model.encoder.layers.{i}", f"visual.transformer.resblocks.{i}", out)
    return out


def read_hf_config(directory: Path) -> dict[str, Any]:
    """config.json of a transformers CLIP directory, or one line saying what is wrong with it."""
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json (not a transformers model directory)")
    hf_cfg = read_json_object(path, ValueError)
    if hf_cfg.get("model_type") != "clip":
        raise ValueError(f"{directory}: model_type {hf_cfg.get('model_type')!r} is not supported (only 'clip')")
    for part in ("vision_config", "text_config"):
        if not isinstance(hf_cfg.get(part, {}), dict):
            raise ValueError(f"{path}: {part!r} should be an object")
    return hf_cfg


# buffers some transformers versions save and others rebuild: neither missing nor extra is a problem
HF_OPTIONAL = re.compile(r".*position_ids$")


def load_hf_clip(model_cls: Any, directory: Path) -> Any:
    """transformers' CLIPModel from `directory`, refusing what from_pretrained lets through with a log line:
    weights missing (initialised at random), unexpected or of another shape; unreadable weight files too."""
    try:
        hf, info = model_cls.from_pretrained(str(directory), local_files_only=True, output_loading_info=True)
    except Exception as exn:  # a truncated file: safetensors' own error types, OSError, ValueError
        reason = one_line(exn)
        raise ValueError(f"{directory}: cannot load the transformers weights: {reason}") from exn
    missing = [k for k in info.get("missing_keys", []) if not HF_OPTIONAL.match(k)]
    unexpected = [k for k in info.get("unexpected_keys", []) if not HF_OPTIONAL.match(k)]
    shapes = [str(m[0]) if isinstance(m, tuple | list) else str(m) for m in info.get("mismatched_keys", [])]
    groups = (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
    problem = "; ".join(key_summary(label, sorted(keys)) for label, keys in groups if keys)
    if problem:
        raise WeightsMismatch(f"{directory}: the weights do not fit its config.json: {problem}")
    return hf.eval()


def import_hf_clip(directory: str | Path, out: str | Path) -> str:
    """A Hugging Face CLIP model directory (config.json + weights + tokenizer files) -> bundle."""
    try:
        from transformers import CLIPModel
    except ImportError as exn:  # the [hf] extra: a one-line error, not a traceback
        raise RuntimeError(
            f'--hf reads the directory with transformers, which is not installed ({exn}): pip install "clipforge[hf]"'
        ) from exn

    directory, out = Path(directory), Path(out)
    read_hf_config(directory)  # one line for what transformers would answer with a traceback
    hf = load_hf_clip(CLIPModel, directory)
    cfg = hf_clip_config(hf.config.to_dict())
    state = hf_clip_to_open_clip(hf.state_dict(), cfg["vision_cfg"]["layers"], cfg["text_cfg"]["layers"])
    model = load_weights(build_model(cfg), state, f"{directory} (converted)")
    pre = (
        json.loads((directory / "preprocessor_config.json").read_text())
        if (directory / "preprocessor_config.json").is_file()
        else {}
    )
    pp = preprocess_cfg(
        cfg, {k: v for k, v in {"mean": pre.get("image_mean"), "std": pre.get("image_std")}.items() if v}
    )
    fp = save_bundle(
        model,
        out,
        arch=f"hf-clip:{directory.name}",
        model_cfg=cfg,
        preprocess=pp,
        provenance={"imported_from": str(directory), "format": "transformers"},
    )
    tok_files = [
        f
        for f in directory.iterdir()
        if re.match(r"(vocab\.json|merges\.txt|tokenizer.*|special_tokens_map\.json)$", f.name)
    ]
    if tok_files:  # the model's own tokenizer travels inside the bundle
        (out / "tokenizer").mkdir(exist_ok=True)
        for f in tok_files:
            shutil.copy2(f, out / "tokenizer" / f.name)
        meta = json.loads((out / "bundle.json").read_text())
        meta["tokenizer"] = {"name": "bundle:tokenizer", "context_length": cfg["text_cfg"]["context_length"]}
        (out / "bundle.json").write_text(json.dumps(meta, indent=2))
    return fp


def export_open_clip(bundle_dir: str | Path, out: str | Path) -> Path:
    """Write open_clip's own model-directory format: `open_clip_config.json` + `open_clip_model.safetensors`.

    Load it with `open_clip.create_model_and_transforms("local-dir:OUT")`, or with
    `create_model_and_transforms(ARCH, pretrained="OUT/open_clip_model.safetensors")` for a built-in ARCH.
    """
    b = load_bundle(bundle_dir, device="cpu", precision="fp32")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in b.model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    pp = b.meta["preprocess"]
    config = {
        "model_cfg": b.meta["model_cfg"],
        "preprocess_cfg": {
            "size": pp["image_size"],
            "mean": pp["mean"],
            "std": pp["std"],
            "interpolation": pp["interpolation"],
            "resize_mode": pp["resize_mode"],
        },
    }
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return out


def export_onnx(bundle_dir: str | Path, out: str | Path | None = None, opset: int = 17) -> Path:
    """Image and text encoders as two ONNX graphs with a dynamic batch axis (default: BUNDLE/onnx/)."""
    b: Bundle = load_bundle(bundle_dir, device="cpu", precision="fp32", backend="torch")  # not its old graphs
    final = Path(out) if out else Path(bundle_dir) / ONNX_DIR
    if final.exists() and not (final.is_dir() and {p.name for p in final.iterdir()} <= ONNX_FILES):
        raise ValueError(f"{final} exists and holds more than ONNX graphs: refusing to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))  # graphs appear whole or not at all
    model = b.model.eval()

    class ImageEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W] -> [N, D]
            return self.clip.encode_image(pixel_values, normalize=True)  # type: ignore[operator]

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [N, L] -> [N, D]
            return self.clip.encode_text(input_ids, normalize=True)  # type: ignore[operator]

    size = b.meta["preprocess"]["image_size"]
    size = tuple(size) if isinstance(size, list) else (size, size)
    pixels = torch.zeros(2, 3, *size)
    tokens = b.tokenizer(["a photo", "of something"])
    try:
        for module, args, name, inp, outp in (
            (ImageEncoder(), (pixels,), "image_encoder", "pixel_values", "image_embeds"),
            (TextEncoder(), (tokens,), "text_encoder", "input_ids", "text_embeds"),
        ):
            with warnings.catch_warnings():
                # the text tower pools at the end-of-text token, x[arange(N), ids.argmax(-1)]: the exporter warns
                # that NEGATIVE indices would go wrong in ONNX; these never are (tests compare both backends)
                warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
                torch.onnx.export(
                    module,
                    args,
                    str(tmp / f"{name}.onnx"),
                    input_names=[inp],
                    output_names=[outp],
                    dynamic_axes={inp: {0: "batch"}, outp: {0: "batch"}},
                    opset_version=opset,
                    dynamo=False,
                )
        (tmp / "onnx.json").write_text(json.dumps({"weights_sha256": b.fingerprint, "opset": opset}, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)
    swap_in(tmp, final)
    return final
