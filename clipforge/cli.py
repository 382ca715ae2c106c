"""The `clipforge` command: one entry point, a subcommand per job, one-line errors."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipforge.cliutil import OneLineParser, at_least, error_line
from clipforge.cliutil import print_json as _print_json

QUICKSTART_DATA = "data/synth"

SYNTH_MAX = 100_000_000  # images `data synth` writes per split: beyond it a typo, not a data set


def cmd_data_synth(a: argparse.Namespace) -> int:
    from clipforge.training.synth import write_synth

    _print_json(
        write_synth(a.out, train=a.train, val=a.val, per_class=a.per_class, shard_size=a.shard_size, seed=a.seed)
    )
    return 0


def cmd_data_shards(a: argparse.Namespace) -> int:
    from clipforge.training.pack import pack_shards

    _print_json(
        pack_shards(
            a.source,
            a.out,
            shard_size=a.shard_size,
            max_size=a.max_size,
            quality=a.quality,
            path_col=a.path_col,
            caption_col=a.caption_col,
        )
    )
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from clipforge.training.config import load_config
    from clipforge.training.loop import train

    cfg = load_config(a.config, a.set)
    summary = train(cfg, resume=a.resume)
    _print_json({k: v for k, v in summary.items() if k != "eval"} | {"eval": _short_eval(summary.get("eval", {}))})
    return 0


def _short_eval(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in ev.items() if not isinstance(v, dict | list)}


def cmd_eval(a: argparse.Namespace) -> int:
    from clipforge.encoders.bundle import load_bundle
    from clipforge.encoders.prompts import DEFAULT_TEMPLATES, check_templates
    from clipforge.training.evaluate import retrieval_eval, zeroshot_eval, zeroshot_set

    if not a.zeroshot and not a.val:
        raise ValueError("give --zeroshot FOLDER and/or --val SHARDS")
    templates = check_templates(a.template) if a.template else DEFAULT_TEMPLATES  # before the slow load
    if a.zeroshot:
        zeroshot_set(Path(a.zeroshot))
    bundle = load_bundle(a.bundle, device=a.device)
    out: dict[str, Any] = {}
    if a.zeroshot:
        out.update(zeroshot_eval(bundle, bundle.preprocess, a.zeroshot, templates))
    if a.val:
        out.update(
            retrieval_eval(
                bundle, bundle.preprocess, a.val, a.limit, caption_key=a.caption_key, logit_scale=bundle.logit_scale()
            )
        )
    for warning in out.get("warnings", []):
        print(f"clipforge: warning: {warning}", file=sys.stderr)
    _print_json(out if a.full else _short_eval(out))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from clipforge.training.export import export_bundle

    fp = export_bundle(a.source, a.out)
    _print_json({"bundle": a.out, "fingerprint": fp})
    return 0


def cmd_bundle_import(a: argparse.Namespace) -> int:
    from clipforge.encoders.convert import import_hf_clip, import_open_clip

    if bool(a.hf) == bool(a.arch):
        raise ValueError("give either --arch ARCH --weights FILE (open_clip) or --hf DIR (transformers)")
    if a.hf:
        fp = import_hf_clip(a.hf, a.out)
    else:
        if not a.weights:
            raise ValueError("--arch needs --weights FILE")
        fp = import_open_clip(a.arch, a.weights, a.out, quick_gelu=a.quick_gelu)
    _print_json({"bundle": a.out, "fingerprint": fp})
    return 0


def cmd_bundle_export(a: argparse.Namespace) -> int:
    from clipforge.encoders.convert import export_onnx, export_open_clip

    if not a.open_clip and not a.onnx:
        raise ValueError("give --open-clip DIR and/or --onnx")
    out = {}
    if a.open_clip:
        out["open_clip"] = str(export_open_clip(a.bundle, a.open_clip))
    if a.onnx:
        out["onnx"] = str(export_onnx(a.bundle, a.onnx_dir))
    _print_json(out)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from clipforge.training.report import write_report

    path = write_report(a.run_dir, a.out, examples=not a.no_examples)
    print(f"report: {path}")
    return 0


def cmd_bundle_info(a: argparse.Namespace) -> int:
    from clipforge.encoders.bundle import verify_bundle

    meta = verify_bundle(a.bundle)  # missing or edited weights are an error, not a healthy-looking summary
    if isinstance(meta.get("provenance"), dict):  # the full training config is long; `provenance: "x"` is shown
        meta["provenance"].pop("config", None)
    _print_json(meta)
    return 0


def cmd_quickstart(a: argparse.Namespace) -> int:
    """The main job: synthesize data, train the CPU preset, evaluate, export, index, serve."""
    import shutil

    from clipforge.encoders.bundle import load_bundle
    from clipforge.encoders.convert import export_onnx
    from clipforge.index import Index
    from clipforge.service.cli import serve, settings_or_one_line
    from clipforge.service.settings import Settings
    from clipforge.training.config import load_config
    from clipforge.training.loop import train
    from clipforge.training.report import write_report
    from clipforge.training.synth import write_synth

    data = Path(a.data)
    overrides = [
        f"out_dir={a.out}",
        f"data.train=['{data}/train/shard-{{000000..000019}}.tar']",
        f"data.val={data}/val/shard-000000.tar",
        f"data.zeroshot={data}/zeroshot",
        *a.set,
    ]
    cfg = load_config("cpu-small", overrides)
    if not (cfg.data.val and cfg.data.zeroshot):  # found now, not after the training
        raise ValueError("quickstart evaluates and indexes with data.val and data.zeroshot: they cannot be null")
    settings = settings_or_one_line(Settings, {"host": a.host, "port": a.port})  # serve's, checked before training
    if not (data / "synth.json").is_file():  # after every check: a typo in --set must not cost the synthesis first
        print(f"[1/6] synthesizing the coloured-shapes set into {data}", flush=True)
        write_synth(data)
    print(f"[2/6] training {cfg.model.arch} for {cfg.train.samples} samples -> {cfg.out_dir}", flush=True)
    summary = train(cfg, resume="auto")
    ev = summary.get("eval")
    run = Path(cfg.out_dir)
    print("[3/6] evaluation of the exported bundle", flush=True)
    if ev is None:  # a diagnostic: the job goes on with the bundle
        print(f"  {summary['eval_error']}")
    else:
        print(
            f"  zero-shot top-1 on all {len(ev['zeroshot_classes'])} classes: {ev['zeroshot_top1']:.3f} (chance "
            f"{ev['zeroshot_chance']:.3f}); on held-out combinations: {ev.get('zeroshot_top1_heldout', 0):.3f}"
        )
        print(f"  retrieval R@1 image->text {ev['image_to_text_R@1']:.3f}, text->image {ev['text_to_image_R@1']:.3f}")
    rate = summary["samples_per_s"]
    how = f"at {rate:.0f} samples/s" if rate else "earlier: this run had finished, no new steps"
    print(
        f"  bundle: {summary['bundle']} (fingerprint {summary['fingerprint'][:12]}; trained in {summary['precision']} {how})"
    )
    print(f"  report (curves, diagnostics, confusion matrix, retrieval examples): {write_report(run)}")
    export_onnx(summary["bundle"])  # the ONNX Runtime backend: the fastest encoder on CPU (benchmarks/RESULTS.md)
    index_dir = run / "index"
    print(f"[4/6] indexing the held-out images and captions -> {index_dir}", flush=True)
    shutil.rmtree(index_dir, ignore_errors=True)
    idx = Index.build(load_bundle(summary["bundle"]), f"{data}/val/shard-000000.tar", index_dir)
    print(f"  {len(idx)} items; recall@10 vs exact search: {idx.info().get('images', {}).get('recall@10', 'n/a')}")
    from clipforge.fusion.quickstart import quickstart_fusion

    print(f"[5/6] fusion heads: questions that need colour AND shape -> {run / 'fusion'}", flush=True)
    head_dirs = quickstart_fusion(summary["bundle"], data, run / "fusion")
    if a.no_serve:
        cmd = ["clipforge", "serve", "--bundle", str(summary["bundle"]), "--index", str(index_dir)]
        cmd += [x for h in head_dirs for x in ("--head", str(h))] + ["--host", a.host, "--port", str(a.port)]
        print(f"[6/6] not serving (--no-serve); to serve it: {shlex.join(cmd)}")
        return 0
    url = f"http://{a.host}:{a.port}"
    print(f"[6/6] serving on {url}  (web page: {url}/ , API docs: {url}/docs)")
    print(f'  curl -s {url}/v1/search -H \'Content-Type: application/json\' -d \'{{"text": "a red circle", "k": 3}}\'')
    print(
        f"  curl -s {url}/v1/classify -F images=@{data}/zeroshot/red_square/0000.jpg -F labels='red square' -F labels='blue circle'"
    )
    print(
        f"  curl -s {url}/v1/heads/{head_dirs[-1].parent.parent.name}/predict -F images=@{data}/zeroshot/red_square/0000.jpg "
        "-F texts='is the circle red?'"
    )
    served = quickstart_settings(settings, summary["bundle"], index_dir, head_dirs)
    return serve(served, log_level="warning", access_log=False)


def quickstart_settings(settings: Any, bundle: str | Path, index: str | Path, heads: Sequence[str | Path] = ()) -> Any:
    """The serve step's settings: the checked ones, with the bundle, index and fusion heads the job has just made."""
    made = {"bundle": Path(bundle), "index": Path(index), **({"heads": [Path(h) for h in heads]} if heads else {})}
    return settings.model_copy(update=made)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="clipforge", description="Train, index and serve CLIP-style image-text encoders.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make or pack WebDataset shards").add_subparsers(
        dest="data_command", required=True
    )
    s = data.add_parser("synth", help="write the synthetic coloured-shapes set (shards + zero-shot folders)")
    s.add_argument("out")
    s.add_argument("--train", type=at_least(1, SYNTH_MAX), default=20_000, help="training samples")
    s.add_argument("--val", type=at_least(1, SYNTH_MAX), default=1000, help="held-out samples")
    s.add_argument("--per-class", type=at_least(1, SYNTH_MAX), default=20, help="zero-shot images per class")
    s.add_argument("--shard-size", type=at_least(1), default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_data_synth)
    s = data.add_parser("shards", help="pack a folder (image + sidecar .txt) or CSV/JSONL of (path, caption)")
    s.add_argument("source")
    s.add_argument("out")
    s.add_argument("--shard-size", type=int, default=1000)
    s.add_argument("--max-size", type=int, default=512, help="downscale longer side to this (img2dataset style)")
    s.add_argument("--quality", type=int, default=90)
    s.add_argument("--path-col", default="path")
    s.add_argument("--caption-col", default="caption")
    s.set_defaults(func=cmd_data_shards)

    s = sub.add_parser("train", help="train from a YAML config (a path or a shipped preset name)")
    s.add_argument("config")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.batch_size=64")
    s.add_argument("--resume", default=None, help="'auto' (newest valid checkpoint) or a checkpoint path")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="zero-shot and retrieval evaluation of a bundle")
    s.add_argument("bundle")
    s.add_argument("--zeroshot", help="folder-per-class image set")
    s.add_argument("--val", help="held-out shards for retrieval")
    s.add_argument(
        "--template",
        action="append",
        help="prompt template with {} (repeatable; default: encoders/prompts.py DEFAULT_TEMPLATES)",
    )
    s.add_argument(
        "--limit", type=at_least(2), default=1000, help="held-out pairs for retrieval (--val only; at least 2)"
    )
    s.add_argument("--caption-key", default="txt")
    s.add_argument("--device", default="auto")
    s.add_argument("--full", action="store_true", help="also print per-class accuracy and the confusion matrix")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("export", help="export a run directory or checkpoint to a model bundle")
    s.add_argument("source")
    s.add_argument("out")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("report", help="write an HTML report (curves, diagnostics, examples) for a run directory")
    s.add_argument("run_dir")
    s.add_argument("--out", help="default: RUN_DIR/report.html")
    s.add_argument("--no-examples", action="store_true", help="skip retrieval examples (no bundle needed)")
    s.set_defaults(func=cmd_report)

    b = sub.add_parser("bundle", help="inspect model bundles").add_subparsers(dest="bundle_command", required=True)
    s = b.add_parser("info", help="print a bundle's metadata")
    s.add_argument("bundle")
    s.set_defaults(func=cmd_bundle_info)
    s = b.add_parser("import", help="open_clip arch + weights file, or a Hugging Face CLIP directory -> bundle")
    s.add_argument("out")
    s.add_argument("--arch", help="open_clip architecture name (e.g. ViT-B-32) or config JSON")
    s.add_argument("--weights", help="weights file: .safetensors, or a weights-only .bin/.pt state dict")
    s.add_argument("--quick-gelu", action="store_true", help="QuickGELU activations (OpenAI-trained weights)")
    s.add_argument("--hf", help="a transformers CLIP model directory")
    s.set_defaults(func=cmd_bundle_import)
    s = b.add_parser("export", help="bundle -> open_clip model directory and/or ONNX graphs")
    s.add_argument("bundle")
    s.add_argument("--open-clip", metavar="DIR", help="write open_clip_config.json + open_clip_model.safetensors")
    s.add_argument("--onnx", action="store_true", help="write image/text ONNX graphs (default into BUNDLE/onnx)")
    s.add_argument("--onnx-dir", help="where to write the ONNX graphs")
    s.set_defaults(func=cmd_bundle_export)

    from clipforge.fusion.cli import register as register_fuse
    from clipforge.index.commands import register as register_index
    from clipforge.service.cli import register as register_serve

    register_index(sub)
    register_serve(sub)
    register_fuse(sub)

    s = sub.add_parser("quickstart", help="the main job: synth data, train, evaluate, export, index, serve")
    s.add_argument("--data", default=QUICKSTART_DATA)
    s.add_argument("--out", default="runs/quickstart")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--no-serve",
        action="store_true",
        help="stop after the last step before serving (the index and the fusion heads are built)",
    )
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(func=cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:  # where each line comes from, for debugging
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:  # a warning is one line, as an error is, whether it came from logging or from `warnings`
        handler = logging.StreamHandler()
        handler.setFormatter(OneLineFormatter())
        logging.basicConfig(level=logging.WARNING, handlers=[handler])
        warnings.formatwarning = lambda message, *_a, **_k: f"clipforge: warning: {message}\n"
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        close_progress_bars()
        print("clipforge: interrupted", file=sys.stderr)
        return 130
    except (
        ValueError,
        FileNotFoundError,
        RuntimeError,
        OSError,
        KeyError,
        FloatingPointError,
    ) as exn:  # a divergence too
        if args.verbose:
            raise
        close_progress_bars()
        print(f"clipforge: error: {error_line(exn, parser, args)}", file=sys.stderr)
        return 1


class OneLineFormatter(logging.Formatter):
    """`clipforge: warning: ...`, the form of the CLI's errors and of `warnings` (Python's adds the file and
    source line; logging's default the level in capitals and the module)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"clipforge: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:  # a server's unexpected error: its traceback is what a person needs to fix it
            line += "\n" + self.formatException(record.exc_info)
        return line


def close_progress_bars() -> None:
    """End any bar the failed command left open, so that the error starts its own line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
