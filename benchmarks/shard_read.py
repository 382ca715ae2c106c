"""Reading shards: webdataset's tarfile-based member iterator vs data.tarstream, CPU time per sample.

Both read the same synthetic shards (small JPEG + caption per sample) into the same sample dicts, alternately;
prints CPU microseconds per sample and the ratio.

    python benchmarks/shard_read.py [--shards 6] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import webdataset as wds  # noqa: E402

from benchmarks.peer_openclip import ensure_data  # noqa: E402
from clipforge.data.shards import expand_urls, raw_samples  # noqa: E402


def with_tarfile(shards: list[str]) -> int:
    opened = wds.tariterators.url_opener([{"url": u} for u in shards])
    return sum(1 for _ in wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(opened)))


def with_tarstream(shards: list[str]) -> int:
    return sum(1 for _ in raw_samples(shards, Counter()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    shards = expand_urls(ensure_data()["train"])[: a.shards]
    times: dict[str, list[float]] = {"webdataset/tarfile": [], "clipforge tarstream": []}
    for fn in (with_tarfile, with_tarstream):
        fn(shards)  # warm the page cache
    for _ in range(a.rounds):
        for name, fn in zip(times, (with_tarfile, with_tarstream), strict=True):
            t0 = time.process_time()
            n = fn(shards)
            times[name].append((time.process_time() - t0) / n * 1e6)
    old, new = (statistics.median(v) for v in times.values())
    print(f"{n} samples from {len(shards)} shards, median of {a.rounds} alternating rounds (CPU time)")
    for name, v in times.items():
        print(f"{name:22s} {statistics.median(v):7.1f} us/sample")
    print(f"speed-up: {old / new:.2f}x")


if __name__ == "__main__":
    main()
