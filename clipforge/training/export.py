"""`clipforge export RUN_DIR|CHECKPOINT OUT_BUNDLE`: checkpoint -> model bundle."""

from __future__ import annotations

from pathlib import Path

from clipforge.encoders.bundle import save_bundle
from clipforge.encoders.model import build_model, load_weights
from clipforge.training.checkpoint import latest_valid_checkpoint, load_checkpoint


def export_bundle(source: str | Path, out: str | Path) -> str:
    source = Path(source)
    if source.is_dir():
        found = latest_valid_checkpoint(source)
        if found is None:
            raise FileNotFoundError(f"no valid checkpoint under {source}/checkpoints")
        _, ckpt = found
    elif source.is_file():
        ckpt = load_checkpoint(source)
    else:
        raise FileNotFoundError(f"{source} is neither a run directory nor a checkpoint file")
    siglip = ckpt.get("loss") == "siglip"
    model = build_model(ckpt["model_cfg"], init_logit_bias=0.0 if siglip else None)
    load_weights(model, ckpt["model"], f"the checkpoint's model ({ckpt['arch']})")
    cfg = ckpt.get("config", {})
    return save_bundle(
        model,
        out,
        arch=ckpt["arch"],
        model_cfg=ckpt["model_cfg"],
        loss=ckpt.get("loss", "clip"),
        provenance={
            "steps": ckpt["step"],
            "samples_seen": ckpt["samples_seen"],
            "data": list(cfg.get("data", {}).get("train", [])),
            "config": cfg,
        },
    )
