"""Quality at equal samples seen: zero-shot top-1 on the synthetic set, clipforge vs open_clip's trainer.

Both train the same config on the same shards with the same hyper-parameters; both final models are evaluated
by the same code (clipforge's zero-shot evaluator on the folder-per-class set, prompt ensemble).

    python benchmarks/train_quality.py [--samples 12800] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peer_openclip import ensure_data, prepare_peer_env, run_openclip, run_ours  # noqa: E402

TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.")


def evaluate_openclip_checkpoint(ckpt: Path, arch: str, folder: str) -> dict:
    import torch

    from clipforge.encoders.model import build_model, eval_preprocess, preprocess_cfg, resolve_model_config
    from clipforge.training.evaluate import zeroshot_eval
    from clipforge.training.loop import as_encoder

    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]  # our own file, just written
    state = {k.removeprefix("module."): v for k, v in state.items()}
    _, cfg = resolve_model_config(arch)
    model = build_model(cfg)
    model.load_state_dict(state)
    encoder = as_encoder(model.eval(), cfg, torch.device("cpu"), "fp32")
    return zeroshot_eval(encoder, eval_preprocess(preprocess_cfg(cfg)), folder, TEMPLATES)


def evaluate_bundle(path: Path, folder: str) -> dict:
    from clipforge.encoders.bundle import load_bundle
    from clipforge.training.evaluate import zeroshot_eval

    bundle = load_bundle(path, precision="fp32")
    return zeroshot_eval(bundle, bundle.preprocess, folder, TEMPLATES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cf-tiny-vit")
    ap.add_argument("--samples", type=int, default=12800)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    a = ap.parse_args()
    data = ensure_data()
    env = prepare_peer_env()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            common = dict(arch=a.arch, samples=a.samples, batch=128, lr=1e-3, wd=0.1, warmup=30, workers=1, seed=seed)
            ours = evaluate_bundle(run_ours(data, out=Path(tmp), **common)["bundle"], data["zeroshot"])
            theirs = evaluate_openclip_checkpoint(
                run_openclip(data, out=Path(tmp), env=env, **common)["checkpoint"], a.arch, data["zeroshot"]
            )
            rows.append((seed, ours, theirs))
            print(
                f"seed {seed}: top-1 clipforge {ours['zeroshot_top1']:.3f} (held-out {ours['zeroshot_top1_heldout']:.3f})"
                f" | open_clip_train {theirs['zeroshot_top1']:.3f} (held-out {theirs['zeroshot_top1_heldout']:.3f})",
                flush=True,
            )
    o = statistics.mean(r[1]["zeroshot_top1"] for r in rows)
    t = statistics.mean(r[2]["zeroshot_top1"] for r in rows)
    print(f"\n{a.arch}, {a.samples} samples seen, seeds {a.seeds}; 30 classes, chance 0.033")
    print(f"mean zero-shot top-1: clipforge {o:.3f}, open_clip_train {t:.3f} -> {'>=' if o >= t else '<'} (target: >=)")


if __name__ == "__main__":
    main()
