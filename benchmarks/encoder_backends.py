"""Image and text encoding throughput per backend: PyTorch fp32, PyTorch bf16 autocast, ONNX Runtime (CPU).

Random-init weights of the small preset (cf-tiny-vit) and of ViT-B-32, in one run. Each measurement runs
batches for at least --seconds (after a warm-up batch); bf16 uses smaller batches where it is very slow, since
only samples/s is compared.

    python benchmarks/encoder_backends.py [--archs cf-tiny-vit ViT-B-32] [--seconds 4]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipforge.encoders.bundle import load_bundle, save_bundle  # noqa: E402
from clipforge.encoders.convert import export_onnx  # noqa: E402
from clipforge.encoders.device import cpu_bf16_is_fast  # noqa: E402
from clipforge.encoders.model import build_model, resolve_model_config  # noqa: E402

TEXTS = ["a photo of a small red circle on the left", "a drawing of a large blue square", "an image of a dog"]


def rate(fn, batch: int, seconds: float) -> float:
    fn(batch)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        fn(batch)
        n += batch
    return n / (time.perf_counter() - t0)


def measure(bundle, kind: str, batch: int, seconds: float) -> float:
    size = bundle.meta["preprocess"]["image_size"]
    if kind == "image":
        return rate(lambda b: bundle.encode_images(torch.randn(b, 3, size, size)), batch, seconds)
    return rate(lambda b: bundle.encode_texts([TEXTS[i % 3] for i in range(b)]), batch, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["cf-tiny-vit", "ViT-B-32"])
    ap.add_argument("--seconds", type=float, default=4.0)
    a = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, bf16 fast on this CPU: {cpu_bf16_is_fast()}"
    )
    print(f"{'arch':<12} {'tower':<6} {'torch fp32':>12} {'torch bf16':>12} {'onnxruntime':>12}   fastest")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs:
            name, cfg = resolve_model_config(arch)
            torch.manual_seed(0)
            path = Path(tmp) / name
            save_bundle(build_model(cfg), path, arch=name, model_cfg=cfg)
            export_onnx(path)
            big = cfg["vision_cfg"].get("width", 768) >= 512
            backends = {
                "torch fp32": load_bundle(path, device="cpu", precision="fp32", backend="torch"),
                "torch bf16": load_bundle(path, device="cpu", precision="bf16", backend="torch"),
                "onnxruntime": load_bundle(path, device="cpu", backend="onnx"),
            }
            for kind in ("image", "text"):
                rates = {}
                for label, b in backends.items():
                    batch = (2 if label == "torch bf16" and not cpu_bf16_is_fast() else 16) if big else 64
                    rates[label] = measure(b, kind, batch, a.seconds)
                best = max(rates, key=rates.get)
                print(
                    f"{name:<12} {kind:<6} " + " ".join(f"{rates[k]:10.1f}/s" for k in rates) + f"   {best}", flush=True
                )


if __name__ == "__main__":
    main()
