"""`clipforge fuse train | eval | predict | compare`: the fusion subcommands (registered by clipforge/cli.py)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from clipforge.cliutil import at_least
from clipforge.encoders.jsonfile import json_text


def _short(m: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items() if isinstance(v, int | float | str)}


def cmd_fuse_train(a: argparse.Namespace) -> int:
    from clipforge.fusion.config import load_fuse_config
    from clipforge.fusion.train import train_head

    run = train_head(load_fuse_config(a.config, a.set))
    print(
        json_text(
            {k: v for k, v in run.items() if k not in ("history", "full_metrics", "module", "metrics")}
            | {"metrics": _short(run["metrics"])},
            indent=2,
            default=str,
        )
    )
    return 0


def head_and_bundle(head_arg: str, bundle_arg: str | None) -> tuple[Path, str, Any]:
    """(head folder, bundle path, loaded head): the bundle given, else the one head.json records; a head of
    another bundle is refused in one line."""
    from clipforge.encoders.bundle import read_bundle_meta
    from clipforge.fusion.head import head_dir, load_head, read_head_meta

    path = head_dir(head_arg)
    bundle = bundle_arg or (read_head_meta(path).get("provenance") or {}).get("bundle")
    if not bundle:
        raise ValueError("give --bundle (the head does not record the bundle it was trained with)")
    if not bundle_arg and not (Path(bundle) / "bundle.json").is_file():
        raise ValueError(f"the bundle {path / 'head.json'} records, {bundle}, is not there: give --bundle")
    return path, str(bundle), load_head(path, fingerprint=str(read_bundle_meta(bundle)["weights_sha256"]))


def cmd_fuse_eval(a: argparse.Namespace) -> int:
    from clipforge.fusion.features import load_pairs
    from clipforge.fusion.metrics import evaluate_groups
    from clipforge.fusion.train import encode_targets

    path, bundle, head = head_and_bundle(a.head, a.bundle)
    data = load_pairs(
        a.data,
        bundle,
        image_key=a.image_key,
        text_key=a.text_key,
        label_key=a.label_key,
        group_keys=tuple(a.group or ["heldout"]),
        cache_dir=a.cache_dir,
        device=a.device,
    )
    zi, zt = data.pairs()
    probs = head.predict(zi, zt)
    metrics = evaluate_groups(
        probs, encode_targets(data.labels, head.task, head.labels), head.task, head.labels, data.groups
    )
    out = {"head": str(path), "kind": head.kind, "pairs": len(data), **_short(metrics)}
    if a.full:
        out |= {k: v for k, v in metrics.items() if isinstance(v, dict | list)}
    print(json_text(out, indent=2))
    return 0


def cmd_fuse_predict(a: argparse.Namespace) -> int:
    import itertools
    import sys
    from collections import Counter

    from clipforge.data.shards import skip_reasons
    from clipforge.fusion.predict import answers_page, predict_rows, thumbnail
    from clipforge.index.embed import TALLIES

    _, bundle, head = head_and_bundle(a.head, a.bundle)
    stats: Counter = Counter()
    samples: Counter = Counter()
    rows = predict_rows(
        head,
        bundle,
        a.data,
        image_key=a.image_key,
        text_key=a.text_key,
        batch_size=a.batch_size,
        device=a.device,
        stats=stats,
        skipped=samples,
    )
    to_stdout = a.out in (None, "-")
    if not to_stdout:  # before the encoders run
        check_out_file(Path(a.out), "--out")
    if a.html:
        check_out_file(Path(a.html), "--html")
    shown: list[tuple[str | None, dict[str, Any]]] = []

    def answers() -> Iterator[dict[str, Any]]:
        for row, answer in rows:
            if a.html and len(shown) < a.html_limit:
                shown.append((thumbnail(row), answer))
            yield answer

    stream = answers()
    first = next(stream, None)  # the data is read, embedded and checked: nothing is created if it fails
    n = write_lines(itertools.chain([first] if first is not None else [], stream), None if to_stdout else Path(a.out))
    if a.html:
        write_text(Path(a.html), answers_page(head, a.data, shown, n), "--html")
    missed = stats["unanswered"]
    why, not_pairs = skip_reasons(stats, ignore=(*TALLIES, "unanswered")), skip_reasons(samples)
    print(
        f"{n} pairs, {n - missed} answered by head {head.name} ({head.kind}, {head.task}: {', '.join(head.labels)})"
        + (f"; {missed} not, with an error line each (their images: {why})" if missed else "")
        + (f"; shard samples that are not pairs: {not_pairs}" if not_pairs else "")
        + (f" -> {a.out}" if not to_stdout else "")
        + (f"; page of the first {len(shown)}: {a.html}" if a.html else ""),
        file=sys.stderr,
    )
    return 0


def check_out_file(out: Path, flag: str = "--out") -> None:
    """Refuse at once an output that cannot become a file: a directory, or a path through a file."""
    if out.is_dir():
        raise ValueError(f"{flag} {out}: is a directory; give the name of the file to write")
    existing = next((p for p in out.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"{flag} {out}: {existing} is a file, not a directory")


def write_lines(rows: Iterable[dict[str, Any]], out: Path | None) -> int:
    """JSON lines to standard output, or to `out` (atomically, see `write_text`). Returns the count."""
    n = 0
    if out is None:
        for row in rows:
            print(json.dumps(row))
            n += 1
        return n

    def lines() -> Iterator[str]:
        nonlocal n
        for row in rows:
            n += 1
            yield json.dumps(row) + "\n"

    write_text(out, lines(), "--out")
    return n


def write_text(out: Path, chunks: Iterable[str], flag: str) -> None:
    """`out` whole or not at all: temp file, fsync, rename (a failure half-way leaves no torn file that looks
    complete, and an earlier `out` as it was), readable as any other file (mkstemp makes 0600)."""
    tmp: str | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except OSError as exn:
        why = exn.strerror or str(exn)
        raise ValueError(f"{flag} {out}: {why[:1].lower()}{why[1:]}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def cmd_fuse_compare(a: argparse.Namespace) -> int:
    from clipforge.fusion.compare import compare, parse_kinds, table_markdown
    from clipforge.fusion.config import load_fuse_config

    cfg, kinds = load_fuse_config(a.config, a.set), parse_kinds(a.kinds)
    if a.budgets is not None:
        from clipforge.fusion.sweep import parse_budgets, sweep, sweep_markdown

        summary = sweep(cfg, kinds, parse_budgets(a.budgets), boot=a.bootstrap, seeds=a.seeds)
        print(sweep_markdown(summary))
        print(f"report: {summary['report']}")
        return 0
    result = compare(cfg, kinds, boot=a.bootstrap, seeds=a.seeds)
    print(table_markdown(result))
    print(f"report: {result['report']}")
    return 0


def cmd_fuse_cache(a: argparse.Namespace) -> int:
    import time

    from clipforge.fusion.features import cache_entries, default_cache_dir

    entries = cache_entries(a.cache_dir)
    where = a.cache_dir or default_cache_dir()
    if a.clear or a.older_than is not None:
        cutoff = time.time() - (a.older_than or 0) * 86400
        gone = [e for e in entries if a.clear or e.last_used < cutoff]
        for e in gone:
            e.path.unlink(missing_ok=True)
        kept = len(entries) - len(gone)
        print(f"{where}: removed {len(gone)} entries ({sum(e.size for e in gone) / 1e6:.1f} MB), {kept} kept")
        return 0
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.last_used))
        fp = e.fingerprint[:12] or "unreadable"
        print(f"{used} UTC  {e.size / 1e6:8.1f} MB  {e.pairs:8,} pairs  bundle {fp:12}  {e.path.name}")
    print(f"{where}: {len(entries)} entries, {sum(e.size for e in entries) / 1e6:.1f} MB")
    return 0


def register(sub: Any) -> None:
    """Add `fuse` and its subcommands to the `clipforge` parser's subparsers."""
    fuse = sub.add_parser("fuse", help="fusion heads on a frozen bundle's image+text embeddings").add_subparsers(
        dest="fuse_command", required=True
    )
    s = fuse.add_parser("train", help="train one head from a YAML config (a path or a shipped preset name)")
    s.add_argument("config", help="e.g. synth-questions, smoke, or a YAML file")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. head.kind=tensor")
    s.set_defaults(func=cmd_fuse_train)

    s = fuse.add_parser("eval", help="evaluate a saved head on a data set")
    s.add_argument("head", help="head folder (or a fuse train run folder)")
    s.add_argument("--data", required=True, help=".jsonl/.csv table or WebDataset shards")
    s.add_argument("--bundle", help="the bundle (default: the one recorded in head.json)")
    s.add_argument("--image-key", default="image")
    s.add_argument("--text-key", default="text")
    s.add_argument("--label-key", default="label")
    s.add_argument(
        "--group",
        action="append",
        default=[],
        help="boolean field reported as a subset (repeatable; default: heldout, which these replace)",
    )
    s.add_argument("--cache-dir", default=None)
    s.add_argument("--device", default="auto")
    s.add_argument("--full", action="store_true", help="also print the reliability bins and confusion matrix")
    s.set_defaults(func=cmd_fuse_eval)

    s = fuse.add_parser("predict", help="a saved head's answers for every (image, text) pair of a table or shards")
    s.add_argument("head", help="head folder (or a fuse train run folder)")
    s.add_argument(
        "--data", required=True, help=".jsonl/.csv table (image, text) or WebDataset shards; no labels needed"
    )
    s.add_argument("--out", help="JSON lines file, one answer per pair in input order (default: standard output)")
    s.add_argument("--bundle", help="the bundle (default: the one recorded in head.json)")
    s.add_argument("--image-key", default="image")
    s.add_argument("--text-key", default="text")
    s.add_argument("--batch-size", type=at_least(1), default=128, help="images per encoder batch")
    s.add_argument("--device", default="auto")
    s.add_argument("--html", help="also a page to look at: each pair's image, text and answer")
    s.add_argument("--html-limit", type=at_least(1), default=200, help="pairs on the page (the first N)")
    s.set_defaults(func=cmd_fuse_predict)

    s = fuse.add_parser("compare", help="train every kind on the same cached features; table + HTML report")
    s.add_argument("config")
    s.add_argument("--kinds", default="all", help="'all' or a comma list, e.g. late,additive,tensor")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--bootstrap", type=at_least(1), default=2000, help="bootstrap resamples for the gain intervals")
    s.add_argument(
        "--budgets",
        help="compare at each of these parameter budgets (e.g. 1200,2400,4800,9600): OUT/budget-N/ each, "
        "plus OUT/sweep.html, accuracy against parameters per kind",
    )
    s.add_argument(
        "--seeds",
        type=at_least(1),
        default=1,
        help="train each kind with this many seeds (fit.seed, +1, ...): means, sd, and intervals that hold seed noise",
    )
    s.set_defaults(func=cmd_fuse_compare)

    s = fuse.add_parser("cache", help="list the feature cache's entries (last use, size, bundle), or remove old ones")
    s.add_argument("--cache-dir", default=None, help="default: $XDG_CACHE_HOME/clipforge/fusion")
    s.add_argument("--older-than", type=at_least(0), metavar="DAYS", help="remove entries not used for DAYS days")
    s.add_argument("--clear", action="store_true", help="remove every entry (each is recomputed when next needed)")
    s.set_defaults(func=cmd_fuse_cache)
