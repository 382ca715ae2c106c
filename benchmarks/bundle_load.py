"""Loading a bundle per backend: wall time of `load_bundle` and the process's peak RSS, each in a fresh process.

A random-init bundle of --arch (default ViT-B-32) with ONNX graphs is written to a temporary directory; then
for each backend a new interpreter imports clipforge, loads the bundle, encodes one caption, and reports. On
ONNX Runtime no PyTorch model should be built, which is what the RSS and time difference show.

    python benchmarks/bundle_load.py [--arch ViT-B-32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
from clipforge.encoders.bundle import load_bundle
t0 = time.perf_counter()
b = load_bundle(sys.argv[1], device="cpu", backend=sys.argv[2])
seconds = time.perf_counter() - t0
b.encode_texts(["a red circle"])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent (here, the one that exported)
rss = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM")) / 1024
print(json.dumps({"backend": b.backend, "seconds": seconds, "rss_mib": rss,
                  "torch_model": getattr(b, "_model", "always") is not None}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    import torch

    from clipforge.encoders.bundle import save_bundle
    from clipforge.encoders.convert import export_onnx
    from clipforge.encoders.model import build_model, resolve_model_config

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        arch, cfg = resolve_model_config(a.arch)
        bundle = Path(tmp) / "b"
        save_bundle(build_model(cfg), bundle, arch=arch, model_cfg=cfg)
        export_onnx(bundle)
        print(f"{'backend':<8} {'load_bundle s':>14} {'peak RSS MiB':>13}  torch model built")
        for _ in range(a.repeats):
            for backend in ("onnx", "torch"):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(bundle), backend],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{r['backend']:<8} {r['seconds']:>14.2f} {r['rss_mib']:>13.0f}  {r['torch_model']}")


if __name__ == "__main__":
    main()
