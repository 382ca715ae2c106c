"""Merging parts directories (the embedding split over processes): what is refused, with one-line errors,
before anything is built, and nothing is left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clipforge.index import Index, IndexInputError
from clipforge.index.build import embed_to_parts


@pytest.fixture(scope="module")
def parts(trained_bundle, synth_data, tmp_path_factory) -> dict[str, Path]:
    """Two parts directories over disjoint shards (100 items each)."""
    root = Path(synth_data["root"]) / "train"
    out = tmp_path_factory.mktemp("parts")
    embed_to_parts(trained_bundle, str(root / "shard-000000.tar"), out / "p0", progress=False)
    embed_to_parts(trained_bundle, str(root / "shard-000001.tar"), out / "p1", progress=False)
    return {"p0": out / "p0", "p1": out / "p1", "root": root}


def refused(bundle, dirs, out: Path, match: str) -> str:
    with pytest.raises(IndexInputError, match=match) as info:
        Index.merge_parts(bundle, dirs, out)
    assert "\n" not in str(info.value)  # one line for the user
    assert not out.exists()  # nothing half-built left behind
    return str(info.value)


def test_good_parts_merge(trained_bundle, parts, tmp_path):
    idx = Index.merge_parts(trained_bundle, [parts["p0"], parts["p1"]], tmp_path / "ok")
    assert len(idx) == 200 and idx.get(100).source.endswith("shard-000001.tar")


def test_a_directory_given_twice_or_the_same_data_twice_is_refused(trained_bundle, parts, tmp_path):
    refused(trained_bundle, [parts["p0"], parts["p1"], parts["p0"]], tmp_path / "o", "given twice")
    copy = tmp_path / "copy-of-p0"
    shutil.copytree(parts["p0"], copy)  # same shard embedded again elsewhere: its items would be in twice
    refused(trained_bundle, [parts["p0"], copy], tmp_path / "o", "both embedded .*shard-000000.tar")
    again = tmp_path / "p0-again"
    spec = str(parts["root"] / "shard-{000000..000001}.tar")  # overlaps both p0 and p1
    embed_to_parts(trained_bundle, spec, again, progress=False)
    refused(trained_bundle, [parts["p1"], again], tmp_path / "o", "both embedded .*shard-000001.tar")


def test_empty_or_malformed_part_lists_are_refused(trained_bundle, parts, tmp_path):
    refused(trained_bundle, [], tmp_path / "o", "no parts directories given")
    refused(trained_bundle, str(parts["p0"]), tmp_path / "o", "as a list")
    refused(trained_bundle, [tmp_path / "nope"], tmp_path / "o", "not a directory")
    with pytest.raises(IndexInputError, match="needs the model bundle"):
        Index.merge_parts(None, [parts["p0"]], tmp_path / "o")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda info: "{not json", "not valid JSON"),
        (lambda info: json.dumps([1, 2]), "JSON object, not list"),
        (lambda info: json.dumps({k: v for k, v in info.items() if k != "items"}), "'items' is missing"),
        (lambda info: json.dumps({**info, "items": "100"}), "'items' should be int, not str"),
        (lambda info: json.dumps({**info, "dim": True}), "'dim' should be int, not bool"),
        (lambda info: json.dumps({**info, "skipped": {"bad_image": "x"}}), "'skipped' should count"),
        (lambda info: json.dumps({**info, "captions": info["items"] + 1}), "do not add up"),
        (lambda info: json.dumps({**info, "items": info["items"] + 1}), "records 101 images, its chunk files hold 100"),
        (lambda info: json.dumps({**info, "captions": info["captions"] - 1}), "records 99 captions"),
    ],
    ids=[
        "invalid-json",
        "list",
        "no-items",
        "items-str",
        "dim-bool",
        "skipped",
        "captions>items",
        "items",
        "captions",
    ],
)
def test_a_parts_json_of_the_wrong_shape_or_counts_is_refused(trained_bundle, parts, tmp_path, edit, match):
    bad = tmp_path / "bad"
    shutil.copytree(parts["p1"], bad)
    info = json.loads((bad / "parts.json").read_text())
    (bad / "parts.json").write_text(edit(info))
    refused(trained_bundle, [parts["p0"], bad], tmp_path / "o", match)


@pytest.mark.parametrize(
    "damage, match",
    [
        ("images-00000.vecs.npy", "images-00000.vecs.npy is missing"),
        ("images-00000.ids.npy", "records 100 images, its chunk files hold 0"),
        ("captions-00000.ids.npy", "records 100 captions, its chunk files hold 0"),
        ("meta.sqlite", "meta.sqlite is missing"),
        ("truncate:images-00000.vecs.npy", "truncated or corrupt"),
        ("truncate:meta.sqlite", "meta.sqlite"),
    ],
)
def test_a_part_missing_or_with_damaged_files_is_refused(trained_bundle, parts, tmp_path, damage, match):
    bad = tmp_path / "bad"
    shutil.copytree(parts["p1"], bad)
    if damage.startswith("truncate:"):
        path = bad / damage.split(":", 1)[1]
        path.write_bytes(path.read_bytes()[:200])
    else:
        (bad / damage).unlink()
    refused(trained_bundle, [parts["p0"], bad], tmp_path / "o", match)


def test_embedding_into_a_used_parts_directory_is_refused(trained_bundle, parts, tmp_path):
    used = tmp_path / "used"
    shutil.copytree(parts["p0"], used)
    before = {p.name: p.stat().st_size for p in used.iterdir()}
    with pytest.raises(IndexInputError, match="is not empty: embed into a new directory") as info:
        embed_to_parts(trained_bundle, str(parts["root"] / "shard-000002.tar"), used, progress=False)
    assert "\n" not in str(info.value)
    assert {p.name: p.stat().st_size for p in used.iterdir()} == before  # what was there is untouched
