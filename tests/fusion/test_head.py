"""Heads end to end on a random-init micro bundle: feature cache, train, save, load elsewhere, refuse."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipforge.encoders.bundle import Bundle, save_bundle
from clipforge.fusion.config import load_fuse_config
from clipforge.fusion.features import load_pairs
from clipforge.fusion.head import HeadError, load_head, save_head
from clipforge.fusion.train import train_head

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def encoder_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"images": 0, "texts": 0}
    real_images, real_texts = Bundle.encode_images, Bundle.encode_texts

    def images(self, pixels):  # type: ignore[no-untyped-def]
        calls["images"] += 1
        return real_images(self, pixels)

    def texts(self, t):  # type: ignore[no-untyped-def]
        calls["texts"] += 1
        return real_texts(self, t)

    monkeypatch.setattr(Bundle, "encode_images", images)
    monkeypatch.setattr(Bundle, "encode_texts", texts)
    return calls


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from clipforge.encoders.model import build_model, resolve_model_config

    torch.manual_seed(1)
    arch, cfg = resolve_model_config("cf-micro-vit")
    out = tmp_path_factory.mktemp("bundles") / "other"
    save_bundle(build_model(cfg), out, arch=arch, model_cfg=cfg)
    return out


def test_feature_cache_reused_and_invalidated(
    questions: Path, micro_bundle: Path, other_bundle: Path, tmp_path: Path, encoder_calls: dict[str, int]
) -> None:
    table = tmp_path / "t.jsonl"
    rows = (questions / "train.jsonl").read_text().splitlines()
    table.write_text(
        "\n".join(json.dumps({**json.loads(r), "image": str(questions / json.loads(r)["image"])}) for r in rows[:60])
        + "\n"
    )
    kw = {"cache_dir": tmp_path / "cache", "group_keys": ("heldout",), "progress": False}
    first = load_pairs(str(table), micro_bundle, **kw)
    assert not first.cache_hit and encoder_calls["images"] > 0 and encoder_calls["texts"] > 0
    assert len(first) == 60 and first.image_features.shape[0] == 10  # six questions per image, embedded once
    encoder_calls.update(images=0, texts=0)
    again = load_pairs(str(table), micro_bundle, **kw)
    assert again.cache_hit and encoder_calls == {"images": 0, "texts": 0}
    assert np.array_equal(again.pairs()[0], first.pairs()[0]) and again.labels == first.labels
    assert np.array_equal(again.groups["heldout"], first.groups["heldout"])

    other = load_pairs(str(table), other_bundle, **kw)  # another bundle: other features
    assert not other.cache_hit and encoder_calls["images"] > 0
    assert not np.allclose(other.image_features, first.image_features)

    encoder_calls.update(images=0, texts=0)
    image = Path(json.loads(rows[0])["image"])
    os.utime(questions / image, ns=(1, 1))  # an image changed on disk (same table)
    changed = load_pairs(str(table), micro_bundle, **kw)
    assert not changed.cache_hit and encoder_calls["images"] > 0
    table.write_text("\n".join(table.read_text().splitlines()[:30]) + "\n")  # the table changed
    assert len(shorter := load_pairs(str(table), micro_bundle, **kw)) == 30 and not shorter.cache_hit

    import shutil

    resized = tmp_path / "resized"  # the same weights (fingerprint) with another resize mode
    shutil.copytree(micro_bundle, resized)
    meta = json.loads((resized / "bundle.json").read_text())
    meta["preprocess"]["resize_mode"] = "squash" if meta["preprocess"].get("resize_mode") != "squash" else "shortest"
    (resized / "bundle.json").write_text(json.dumps(meta))
    assert not load_pairs(str(table), resized, **kw).cache_hit  # not served the other preprocess's features


def test_cache_lists_and_removes_entries_by_last_use(
    questions: Path, micro_bundle: Path, other_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from clipforge.cli import main
    from clipforge.encoders.bundle import read_bundle_meta
    from clipforge.fusion.features import cache_entries

    cache = tmp_path / "cache"
    kw = {"cache_dir": cache, "progress": False}
    spec = str(questions / "test.jsonl")
    mine = load_pairs(spec, micro_bundle, **kw)
    load_pairs(spec, other_bundle, **kw)
    (cache / "torn.npz").write_bytes(b"PK not a zip")
    (cache / ".abc.123.npz").write_bytes(b"")  # a write in progress: not an entry
    week_ago = 1_000_000_000
    for e in cache_entries(cache):
        os.utime(e.path, (week_ago, week_ago))
    load_pairs(spec, micro_bundle, **kw)  # a hit: this entry's last use is now
    entries = cache_entries(cache)
    assert [e.fingerprint for e in entries][-1] == read_bundle_meta(micro_bundle)["weights_sha256"]
    assert {e.pairs for e in entries if e.fingerprint} == {len(mine)} and len(entries) == 3
    assert [e.fingerprint for e in entries].count("") == 1  # the torn file is listed, as unreadable

    assert main(["fuse", "cache", "--cache-dir", str(cache)]) == 0
    listing = capsys.readouterr().out
    assert "unreadable" in listing and f"{len(mine):8,} pairs" in listing and "3 entries" in listing
    assert main(["fuse", "cache", "--cache-dir", str(cache), "--older-than", "1"]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert [e.fingerprint for e in cache_entries(cache)] == [read_bundle_meta(micro_bundle)["weights_sha256"]]
    assert load_pairs(spec, micro_bundle, **kw).cache_hit  # the entry in use survived
    assert main(["fuse", "cache", "--cache-dir", str(cache), "--clear"]) == 0
    assert cache_entries(cache) == [] and (cache / ".abc.123.npz").exists()


def test_a_truncated_or_empty_cache_entry_is_recomputed_not_a_crash(
    questions: Path, micro_bundle: Path, tmp_path: Path
) -> None:
    """np.load raises BadZipFile on a cut .npz and EOFError on an empty one: both ended `fuse eval` / `fuse
    cache` in a traceback instead of recomputing the entry or listing it as unreadable."""
    from clipforge.fusion.features import cache_entries

    cache = tmp_path / "cache"
    kw = {"cache_dir": cache, "progress": False}
    spec = str(questions / "test.jsonl")
    first = load_pairs(spec, micro_bundle, **kw)
    (entry,) = cache.glob("[!.]*.npz")
    for damaged in (entry.read_bytes()[:3000], b""):
        entry.write_bytes(damaged)
        assert [e.fingerprint for e in cache_entries(cache)] == [""]  # listed, as unreadable
        again = load_pairs(spec, micro_bundle, **kw)
        assert not again.cache_hit and np.array_equal(again.image_features, first.image_features)
        assert load_pairs(spec, micro_bundle, **kw).cache_hit  # rewritten whole


def _cfg(questions: Path, bundle: Path, tmp: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_fuse_config(
        "smoke",
        [
            f"out_dir={tmp / 'run'}",
            f"data.bundle={bundle}",
            f"data.train={questions / 'train.jsonl'}",
            f"data.val={questions / 'test.jsonl'}",
            f"data.cache_dir={tmp / 'cache'}",
            *extra,
        ],
    )


@pytest.mark.parametrize("kind", ["tensor", "gated"])
def test_saved_head_predicts_the_same_in_a_fresh_process(
    kind: str, questions: Path, micro_bundle: Path, other_bundle: Path, tmp_path: Path
) -> None:
    run = train_head(_cfg(questions, micro_bundle, tmp_path, f"head.kind={kind}"), progress=False)
    head_dir = Path(run["head"])
    meta = json.loads((head_dir / "head.json").read_text())
    assert meta["format"] == "clipforge-head/1" and meta["kind"] == kind and meta["labels"] == ["no", "yes"]
    assert meta["metrics"]["accuracy"] == run["metrics"]["accuracy"] and "heldout/accuracy" in meta["metrics"]
    rng = np.random.default_rng(0)
    zi = rng.normal(size=(9, run["module"].dim)).astype(np.float32)
    zt = rng.normal(size=(9, run["module"].dim)).astype(np.float32)
    np.save(tmp_path / "zi.npy", zi)
    np.save(tmp_path / "zt.npy", zt)
    here = load_head(head_dir).predict(zi, zt)
    assert here.shape == (9, 2) and here.dtype == np.float32 and np.allclose(here.sum(1), 1)
    code = (
        "import sys, numpy as np; from clipforge.fusion.head import load_head; d = sys.argv[1]; "
        "h = load_head(d + '/head'); np.save(d + '/out.npy', h.predict(np.load(d + '/zi.npy'), np.load(d + '/zt.npy'))); "
        "np.save(d + '/out_torch.npy', load_head(d + '/head', backend='torch').predict(np.load(d + '/zi.npy'), np.load(d + '/zt.npy')))"
    )
    (tmp_path / "head").symlink_to(head_dir)
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert np.array_equal(np.load(tmp_path / "out.npy"), here)
    assert np.allclose(np.load(tmp_path / "out_torch.npy"), here, atol=1e-6)

    other_fp = json.loads((other_bundle / "bundle.json").read_text())["weights_sha256"]
    with pytest.raises(HeadError, match="trained on bundle") as exn:
        load_head(head_dir, fingerprint=other_fp)
    assert "\n" not in str(exn.value)
    assert load_head(head_dir, fingerprint=meta["bundle_fingerprint"]).kind == kind


def test_load_head_refuses_missing_and_corrupt_folders(questions: Path, micro_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(HeadError, match="no head.json"):
        load_head(tmp_path / "nope")
    head_dir = Path(train_head(_cfg(questions, micro_bundle, tmp_path, "fit.epochs=1"), progress=False)["head"])
    assert load_head(head_dir.parent).path == head_dir  # the run folder `fuse train` prints loads its head
    meta = json.loads((head_dir / "head.json").read_text())
    (head_dir / "head.json").write_text(json.dumps(meta | {"provenance": "edited"}))
    with pytest.raises(HeadError, match="'provenance' should be an object"):  # was an AttributeError in eval
        load_head(head_dir)
    (head_dir / "head.json").write_text(json.dumps(meta))
    weights = head_dir / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(HeadError, match="does not match"):
        load_head(head_dir)
    (head_dir / "head.json").write_text("{")
    with pytest.raises(HeadError, match="not valid JSON"):
        load_head(head_dir)


def test_cli_train_eval_compare(
    questions: Path, micro_bundle: Path, other_bundle: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    from clipforge.cli import main

    common = [
        f"data.bundle={micro_bundle}",
        f"data.train={questions / 'train.jsonl'}",
        f"data.val={questions / 'test.jsonl'}",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    sets = [x for kv in common for x in ("--set", kv)]
    assert main(["fuse", "train", "smoke", "--set", f"out_dir={tmp_path / 'run'}", *sets]) == 0
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3  # one record per epoch
    capsys.readouterr()
    assert (
        main(
            [
                "fuse",
                "eval",
                str(tmp_path / "run"),
                "--data",
                str(questions / "test.jsonl"),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    ev = json.loads(capsys.readouterr().out)
    stored = json.loads((tmp_path / "run" / "head" / "head.json").read_text())["metrics"]
    assert ev["accuracy"] == pytest.approx(stored["accuracy"], abs=1e-4) and ev["pairs"] == 96
    assert "heldout/accuracy" in ev  # the default subset
    evalargs = ["fuse", "eval", str(tmp_path / "run"), "--data", str(questions / "test.jsonl")]
    assert main([*evalargs, "--cache-dir", str(tmp_path / "cache2"), "--group", "nokey"]) == 0
    assert not any(k.startswith("heldout/") for k in json.loads(capsys.readouterr().out))  # --group replaces it
    assert (
        main(
            [
                "fuse",
                "eval",
                str(tmp_path / "run"),
                "--data",
                str(questions / "test.jsonl"),
                "--bundle",
                str(other_bundle),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert "trained on bundle" in err and "\n" not in err

    assert (
        main(
            [
                "fuse",
                "compare",
                "smoke",
                "--kinds",
                "late,additive,lowrank",
                "--bootstrap",
                "200",
                "--set",
                f"out_dir={tmp_path / 'cmp'}",
                "--set",
                "head.budget=3000",
                *sets,
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "fuse compare" in err and "3/3" in err and re.search(r"head/s|s/head", err)  # one bar, with a rate
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["kind"] for r in result["rows"]] == ["late", "additive", "lowrank"]
    assert result["feature_cache_hit"]  # the features train computed are reused
    assert all(r["params"] <= 3000 for r in result["rows"])
    assert "gain_vs_additive" in result["rows"][2] and "heldout/accuracy" in result["rows"][0]
    late, additive, lowrank = result["rows"]
    assert "gain_vs_late" not in late and "gain_vs_concat" not in lowrank  # concat was not run
    g = lowrank["gain_vs_late"]  # paired: the point gain is exactly the difference of the two accuracies
    assert abs(g["gain"] - (lowrank["accuracy"] - late["accuracy"])) < 1e-9 and g["lo"] <= g["gain"] <= g["hi"]
    assert additive["gain_vs_late"]["gain"] == pytest.approx(additive["accuracy"] - late["accuracy"])
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert page.count('data-kind="') == 3 and "reliability" in page and "confusion" in page
    for r in result["rows"]:  # held-out combinations get AUROC and macro-F1 too, as each head measured them
        stored = json.loads((tmp_path / "cmp" / r["kind"] / "head" / "head.json").read_text())["metrics"]
        assert all(r[f"heldout/{m}"] == stored[f"heldout/{m}"] for m in ("accuracy", "auroc", "macro_f1"))
    assert "heldout AUROC %" in page and "heldout macro-F1 %" in page
    assert "| heldout AUROC % | heldout macro-F1 % |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_a_head_does_not_depend_on_what_ran_before_it_in_the_process(
    questions: Path, micro_bundle: Path, tmp_path: Path
) -> None:
    """`fuse compare` and the bench build many modules (budget search, other kinds) before each head: the
    initial weights came from whatever the global random stream held, so one head scored a point apart."""
    import torch

    first = train_head(_cfg(questions, micro_bundle, tmp_path / "a", "head.kind=tensor"), progress=False)
    torch.randn(1000)  # someone else's random numbers
    second = train_head(_cfg(questions, micro_bundle, tmp_path / "b", "head.kind=tensor"), progress=False)
    a = load_head(Path(first["head"])).module.state_dict()
    b = load_head(Path(second["head"])).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_undefined_metrics_are_written_as_json_null_not_nan(tmp_path: Path) -> None:
    """An AUROC on a subset with one class is undefined (NaN). Python's json writes a bare NaN, which is not
    JSON: browsers, jq and other languages refuse the whole head.json or compare.json."""
    from clipforge.encoders.jsonfile import json_text
    from clipforge.fusion.kinds import build_fusion

    value = {"auroc": float("nan"), "rows": [{"x": float("inf"), "y": 0.5}], "t": (1.0, float("-inf"))}
    assert json.loads(json_text(value)) == {"auroc": None, "rows": [{"x": None, "y": 0.5}], "t": [1.0, None]}
    head = save_head(
        tmp_path / "h", build_fusion("tensor", 8, 1, width=2), task="binary", labels=["no", "yes"],
        bundle_fingerprint="f" * 64, metrics={"accuracy": 0.5, "heldout/auroc": float("nan")},
    )  # fmt: skip
    text = (head / "head.json").read_text()
    meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in head.json"))
    assert meta["metrics"] == {"accuracy": 0.5, "heldout/auroc": None}
    assert load_head(head).meta["metrics"]["heldout/auroc"] is None  # and it still loads


def test_report_cells_for_undefined_metrics_read_na() -> None:
    from clipforge.fusion.report import table_html

    row = {"kind": "tensor", "width": 4, "params": 10, "accuracy": 0.9, "auroc": 0.8, "macro_f1": 0.7, "ece": 0.1,
           "heldout/accuracy": 1.0, "heldout/auroc": float("nan"), "heldout/macro_f1": 0.5}  # fmt: skip
    page = table_html({"groups": {"heldout": 3}, "rows": [row]})
    assert '<td data-key="heldout/auroc">n/a</td>' in page and ">nan<" not in page
