"""Training throughput: clipforge's trainer vs open_clip's own trainer, alternately, in one run.

Same model config, synthetic shards, batch size, precision (fp32: on this AVX2 CPU bf16 is ~100x slower),
optimizer settings and DataLoader workers. Also measures the data pipeline alone, which must deliver at least
3x what the trainer consumes.

    python benchmarks/train_throughput.py [--arch cf-tiny-vit] [--samples 3840] [--rounds 2]

With `--against DIR` (another clipforge checkout, e.g. `git worktree add ../before main`) it alternates this
checkout's trainer with that one's instead of open_clip's, to measure a change to the trainer:

    python benchmarks/train_throughput.py --against ../before --samples 1280 --batch 64 --rounds 3

With `--precisions` it alternates this trainer in fp32, bf16 and `auto`, and prints what `auto`'s probe
measured of the model's own step (clipforge.training.precision): whether auto picks the faster one here.

    python benchmarks/train_throughput.py --precisions --samples 3840 --rounds 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peer_openclip import ensure_data, prepare_peer_env, run_openclip, run_ours  # noqa: E402


def data_pipeline_rate(data: dict, arch: str, batch: int, workers: int, batches: int = 40) -> float:
    from clipforge.encoders.model import get_tokenizer, preprocess_cfg, resolve_model_config, tokenizer_cfg
    from clipforge.training.augment import TrainTransform
    from clipforge.training.data import ShardStream, StreamSpec, expand_urls, make_loader

    _, cfg = resolve_model_config(arch)
    pp = preprocess_cfg(cfg)
    spec = StreamSpec(sources=[expand_urls(data["train"])], weights=[1.0], sample_shuffle=2000)
    stream = ShardStream(
        spec, TrainTransform(pp["image_size"]), get_tokenizer(tokenizer_cfg(cfg)), batch, pp["image_size"] * 2
    )
    it = iter(make_loader(stream, workers))
    for _ in range(3):  # start-up and shuffle-buffer fill
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cf-tiny-vit")
    ap.add_argument("--samples", type=int, default=3840)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers for both (best on 2 cores: 1)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--against", type=Path, help="another clipforge checkout to compare with, instead of open_clip")
    ap.add_argument("--precisions", action="store_true", help="fp32 vs bf16 vs auto, instead of open_clip")
    a = ap.parse_args()
    data = ensure_data()
    if a.against:
        return compare_checkouts(data, a)
    if a.precisions:
        return compare_precisions(data, a)
    env = prepare_peer_env()
    common = dict(arch=a.arch, samples=a.samples, batch=a.batch, lr=1e-3, wd=0.1, warmup=10, workers=a.workers, seed=0)
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):  # alternate, so drifts in machine load hit both
            ours.append(run_ours(data, out=Path(tmp), **common)["samples_per_s"])
            theirs.append(run_openclip(data, out=Path(tmp), env=env, **common)["samples_per_s"])
            print(
                f"round {r + 1}: clipforge {ours[-1]:.1f} samples/s, open_clip_train {theirs[-1]:.1f} samples/s",
                flush=True,
            )
    pipe = data_pipeline_rate(data, a.arch, a.batch, a.workers)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores; "
        f"arch {a.arch}, batch {a.batch}, fp32, workers {a.workers}, {a.samples} samples per run, {a.rounds} rounds"
    )
    print(f"clipforge trainer      {o:8.1f} samples/s (median)")
    print(f"open_clip_train        {t:8.1f} samples/s (median)")
    print(f"ratio clipforge/open_clip: {o / t:.2f}x (target >= 1.3x)")
    print(f"data pipeline alone    {pipe:8.1f} samples/s = {pipe / o:.1f}x what the trainer consumes (target >= 3x)")


def compare_checkouts(data: dict, a: argparse.Namespace) -> None:
    common = dict(arch=a.arch, samples=a.samples, batch=a.batch, lr=1e-3, wd=0.1, warmup=10, workers=a.workers, seed=0)
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):  # alternate, so drifts in machine load hit both
            theirs.append(run_ours(data, out=Path(tmp), root=a.against.resolve(), **common)["samples_per_s"])
            ours.append(run_ours(data, out=Path(tmp), **common)["samples_per_s"])
            print(f"round {r + 1}: {a.against} {theirs[-1]:.1f} samples/s, this checkout {ours[-1]:.1f} samples/s")
    o, t = statistics.median(ours), statistics.median(theirs)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores; "
        f"arch {a.arch}, batch {a.batch}, fp32, workers {a.workers}, {a.samples} samples per run, {a.rounds} rounds"
    )
    print(f"{str(a.against):24s} {t:8.1f} samples/s (median)\nthis checkout            {o:8.1f} samples/s (median)")
    print(f"ratio this/other: {o / t:.3f}x")


def compare_precisions(data: dict, a: argparse.Namespace) -> None:
    from clipforge.encoders.device import cpu_bf16_is_fast
    from clipforge.encoders.model import build_model, resolve_model_config
    from clipforge.training.precision import faster, step_seconds

    common = dict(arch=a.arch, samples=a.samples, batch=a.batch, lr=1e-3, wd=0.1, warmup=10, workers=a.workers, seed=0)
    rates: dict[str, list[float]] = {"fp32": [], "bf16": [], "auto": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):  # alternate, so drifts in machine load hit all three
            for p in rates:
                rates[p].append(run_ours(data, out=Path(tmp), precision=p, **common)["samples_per_s"])
            print(
                f"round {r + 1}: " + ", ".join(f"{p} {v[-1]:.1f}" for p, v in rates.items()) + " samples/s", flush=True
            )
    _, model_cfg = resolve_model_config(a.arch)
    probe = step_seconds(build_model(model_cfg), model_cfg) if cpu_bf16_is_fast() else None
    med = {p: statistics.median(v) for p, v in rates.items()}
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores; "
        f"arch {a.arch}, batch {a.batch}, workers {a.workers}, {a.samples} samples per run, {a.rounds} rounds"
    )
    for p, v in med.items():
        print(f"{p:5s} {v:8.1f} samples/s (median)")
    print(
        f"bf16/fp32: {med['bf16'] / med['fp32']:.2f}x; auto/best of the two: {med['auto'] / max(med['fp32'], med['bf16']):.2f}x"
    )
    if probe is None:
        print("auto: bf16 matmuls are not fast on this CPU -> fp32 without timing the step")
    else:
        print(
            f"auto's probe: a step takes {probe['bf16']:.3f} s in bf16, {probe['fp32']:.3f} s in fp32 -> {faster(probe)}"
        )


if __name__ == "__main__":
    main()
