"""`clipforge data shards` (training/pack.py): bad tables and settings are one-line errors naming the row."""

import json

import pytest
from PIL import Image

from clipforge.training.pack import pack_shards


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("t.jsonl", '{"path": "a.png", "caption": "x"}\n[1, 2]\n', r"t.jsonl:2: expected an object"),
        ("t.jsonl", '{"caption": "x"}\n', r"t.jsonl:1: expected an object with a 'path'"),
        ("t.jsonl", '{"path": "a.png"\n', r"t.jsonl:1: not valid JSON"),
        ("t.csv", "caption,path\nb\n", r"t.csv:2: the 'path' column is empty"),
        ("t.csv", "caption,file\nb,a.png\n", "needs columns"),
        ("t.csv", b"caption,path\n\xff\xfe,a.png\n", "not a UTF-8"),
    ],
    ids=["jsonl-not-object", "jsonl-no-path", "jsonl-bad-json", "csv-short-row", "csv-no-column", "not-utf8"],
)
def test_bad_table_rows_are_clear_errors(tmp_path, name, text, match):
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "a.png")
    table = tmp_path / name
    table.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=match) as info:
        pack_shards(table, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # a failed pack leaves nothing behind


@pytest.mark.parametrize("kw", [{"shard_size": 0}, {"max_size": 0}, {"max_size": -5}, {"quality": 500}])
def test_bad_settings_are_refused_before_writing(tmp_path, kw):
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "t.jsonl").write_text(json.dumps({"path": "a.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match="shard_size >= 1"):
        pack_shards(tmp_path / "t.jsonl", tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_a_good_table_packs(tmp_path):
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "t.jsonl").write_text(json.dumps({"path": "a.png", "caption": 7}) + "\n")
    summary = pack_shards(tmp_path / "t.jsonl", tmp_path / "out")
    assert (summary["written"], summary["shards"], dict(summary["skipped"])) == (1, 1, {})


def test_packing_into_a_folder_of_shards_or_packing_nothing_leaves_no_stray_shard(tmp_path):
    """A second pack into the same folder kept the first one's extra shards beside its own (training on the
    folder mixed the two sets); a pack with no usable pair left an empty shard."""
    for i in range(3):
        Image.new("RGB", (20, 20), (i, 2, 3)).save(tmp_path / f"{i}.png")
    (tmp_path / "t.jsonl").write_text(
        "".join(json.dumps({"path": f"{i}.png", "caption": "x"}) + "\n" for i in range(3))
    )
    assert pack_shards(tmp_path / "t.jsonl", tmp_path / "out", shard_size=1)["shards"] == 3
    with pytest.raises(ValueError, match="already holds shards"):
        pack_shards(tmp_path / "t.jsonl", tmp_path / "out", shard_size=2)
    assert len(list((tmp_path / "out").glob("shard-*.tar"))) == 3
    (tmp_path / "blank.jsonl").write_text(json.dumps({"path": "0.png", "caption": " "}) + "\n")
    with pytest.raises(ValueError, match="no usable"):
        pack_shards(tmp_path / "blank.jsonl", tmp_path / "out2")
    assert not list((tmp_path / "out2").glob("*.tar"))
