import argparse
import json

import pytest
from PIL import Image

from clipforge.index import IndexInputError
from clipforge.index.commands import register


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clipforge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_build_search_add_remove_info(trained_bundle, synth_data, tmp_path, capsys):
    out = tmp_path / "idx"
    bundle = str(trained_bundle.path)
    assert run(["index", "build", "--bundle", bundle, "--data", synth_data["val"], "--out", str(out), "--quiet"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["counts"]["items"] == 100 and built["images"]["factory"] == "Flat"

    assert run(["index", "search", str(out), "--text", "a blue square", "-k", "3"]) == 0  # bundle from manifest
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and {"id", "score", "caption", "key", "member"} <= set(hits[0])

    image = tmp_path / "q.png"
    Image.new("RGB", (32, 32), (40, 80, 220)).save(image)
    (tmp_path / "q.txt").write_text("a blue block")
    assert (
        run(
            [
                "index",
                "search",
                str(out),
                "--image",
                str(image),
                "--bundle",
                bundle,
                "-k",
                "2",
                "--filter",
                "color=blue",
            ]
        )
        == 0
    )
    assert all(h["color"] == "blue" for h in json.loads(capsys.readouterr().out))
    # a field repeated is any of its values (the last one alone won before)
    args = ["index", "search", str(out), "--text", "a block", "--bundle", bundle, "-k", "50"]
    assert run([*args, "--filter", "color=blue", "--filter", "color=red"]) == 0
    either = {h["color"] for h in json.loads(capsys.readouterr().out)}
    assert either == {"blue", "red"}, either

    assert run(["index", "add", str(out), str(image)]) == 0
    assert json.loads(capsys.readouterr().out) == {"added": [100], "items": 101}
    assert run(["index", "search", str(out), "--id", "100", "-k", "1", "--target", "captions"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert run(["index", "remove", str(out), "100", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == {"removed": 2, "items": 99}
    assert run(["index", "info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["live"]["items"] == 99 and info["fingerprint"] == trained_bundle.fingerprint


def test_cli_errors_are_exceptions_with_one_line_messages(built_index, tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        run(["index", "search", str(built_index)])
    with pytest.raises(IndexInputError, match="k=5000"):
        run(["index", "search", str(built_index), "--id", "1", "-k", "5000"])
    with pytest.raises(FileNotFoundError, match="no bundle"):
        run(["index", "build", "--bundle", str(tmp_path / "nope"), "--data", "x", "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError):
        run(["index", "info", str(tmp_path / "missing")])
    with pytest.raises(IndexInputError, match="unknown id"):
        run(["index", "remove", str(built_index), "123456"])
    huge = str(10**23)  # beyond SQLite's 64-bit integers: unknown, not an OverflowError
    with pytest.raises(IndexInputError, match="unknown id"):
        run(["index", "remove", str(built_index), huge])
    with pytest.raises(IndexInputError, match="unknown id"):
        run(["index", "search", str(built_index), "--id", huge])
    with pytest.raises(IndexInputError, match="64 bits"):
        run(["index", "search", str(built_index), "--text", "red", "--filter", f"color={huge}"])


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: [1, 2],
        lambda m: {**m, "version_dir": 5},
        lambda m: {**m, "images": []},
        lambda m: {**m, "files": 7},
        lambda m: {**m, "bundle": "x"},
        lambda m: {k: v for k, v in m.items() if k != "dim"},
    ],
    ids=["list", "version_dir", "images", "files", "bundle", "no-dim"],
)
def test_a_manifest_of_the_wrong_shape_is_a_clear_error(built_index, tmp_path, edit):
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(edit(manifest)))
    with pytest.raises(IndexInputError, match="manifest.json"):
        run(["index", "info", str(copy)])
    with pytest.raises(IndexInputError, match="manifest.json"):
        run(["index", "search", str(copy), "--text", "red"])


def test_cli_build_reports_the_rerank_and_no_refine_turns_it_off(trained_bundle, synth_data, tmp_path, capsys):
    bundle = str(trained_bundle.path)
    base = ["index", "build", "--bundle", bundle, "--data", synth_data["train"], "--factory", "IVF8,Flat", "--quiet"]
    assert run([*base, "--out", str(tmp_path / "a")]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["images"]["refine_k_factor"] in (1, 2, 4, 8, 16) and built["images"]["recall@10"] >= 0.95
    assert (tmp_path / "a" / "v0001" / "images.vectors-0000.npy").is_file()
    assert run([*base, "--out", str(tmp_path / "b"), "--no-refine"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert "refine_k_factor" not in built["images"] and not list((tmp_path / "b").rglob("*.npy"))


@pytest.fixture(scope="module")
def micro_index(micro_bundle, synth_data, tmp_path_factory):
    """The 100 held-out images indexed with the random-init micro bundle: enough to run a search."""
    from clipforge.encoders.bundle import load_bundle
    from clipforge.index import Index

    out = tmp_path_factory.mktemp("micro-index") / "idx"
    Index.build(load_bundle(micro_bundle, device="cpu"), synth_data["val"], out, progress=False).close()
    return out


SEARCH_ARGS = [  # (flag, value): what the HTTP search route takes in its body as well
    ("--threshold", "5"),
    ("--threshold", "-1.5"),
    ("--threshold", "1.0001"),
    ("--threshold", "nan"),
    ("--threshold", "inf"),
    ("-k", "0"),
    ("-k", "1001"),
    ("--threshold", "1"),
    ("--threshold", "-1"),
    ("-k", "1000"),
]


@pytest.mark.parametrize(("flag", "value"), SEARCH_ARGS, ids=lambda x: x)
def test_cli_search_refuses_what_the_http_route_refuses(micro_index, micro_bundle, flag, value, capsys):
    """`--threshold 5` printed [] where POST /v1/search answers 422: both now take the index's rule."""
    from pydantic import ValidationError

    from clipforge.cli import main
    from clipforge.service.routers.search import SearchRequest

    field = {"--threshold": "threshold", "-k": "k"}[flag]
    try:
        SearchRequest(text="a red circle", **{field: float(value) if field == "threshold" else int(value)})
        http_refuses = False
    except ValidationError:
        http_refuses = True
    argv = ["index", "search", str(micro_index), "--text", "a red circle", "--bundle", str(micro_bundle), flag, value]
    code = main([*argv, "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == (1 if http_refuses else 0), captured
    if http_refuses:
        assert captured.err.count("\n") == 1 and captured.err.startswith("clipforge: error: "), captured.err
        assert f"{field} must be" in captured.err or f"{field}={value}" in captured.err, captured.err
        assert captured.out == ""
    else:
        assert isinstance(json.loads(captured.out), list)


def test_an_unreadable_image_is_named_by_its_path(micro_index, micro_bundle, synth_data, tmp_path, capsys):
    """`index search --image x.jpg` said only "not a recognised image format"; `index add a.jpg b.jpg` said
    "item 1: ...", leaving the user to count the arguments."""
    import shutil

    from clipforge.cli import main

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    argv = ["index", "search", str(micro_index), "--image", str(bad), "--bundle", str(micro_bundle)]
    assert main([*argv, "--device", "cpu"]) == 1
    assert capsys.readouterr().err == f"clipforge: error: --image {bad}: not a recognised image format\n"
    copy = tmp_path / "idx"
    shutil.copytree(micro_index, copy)
    good = next((synth_data["root"] / "zeroshot" / "red_circle").glob("*.jpg"))
    assert main(["index", "add", str(copy), str(good), str(bad), "--bundle", str(micro_bundle)]) == 1
    assert capsys.readouterr().err == f"clipforge: error: {bad}: not a recognised image format\n"
    assert main(["index", "info", str(copy)]) == 0 and json.loads(capsys.readouterr().out)["live"]["items"] == 100
