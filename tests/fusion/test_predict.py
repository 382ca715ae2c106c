"""`clipforge fuse predict`: a head's answers offline, one per input pair, in order, no labels needed."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from clipforge.cli import main
from clipforge.fusion.config import load_fuse_config
from clipforge.fusion.features import load_pairs
from clipforge.fusion.head import load_head
from clipforge.fusion.train import train_head
from tests.fusion.test_head import other_bundle  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def head(questions: Path, micro_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predict-head")
    cfg = load_fuse_config(
        "smoke",
        [
            f"out_dir={out}",
            f"data.bundle={micro_bundle}",
            f"data.train={questions / 'train.jsonl'}",
            f"data.val={questions / 'test.jsonl'}",
            f"data.cache_dir={out / 'cache'}",
            "head.task=multiclass",
        ],
    )
    train_head(cfg, progress=False)
    return out / "head"


def unlabelled_table(questions: Path, out: Path) -> tuple[Path, list[dict]]:
    """The test questions without their labels, with a missing and a corrupt image in rows 2 and 4."""
    rows = [json.loads(line) for line in (questions / "test.jsonl").read_text().splitlines()][:6]
    (out / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    table = [{"image": str((questions / r["image"]).resolve()), "text": r["text"]} for r in rows]
    table[1]["image"] = str(out / "missing.jpg")
    table[3]["image"] = str(out / "broken.jpg")
    path = out / "ask.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in table))
    return path, rows


def current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def run(args: list[str], capsys) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = main(["fuse", "predict", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_answers_every_pair_in_order_and_says_which_it_could_not(
    head: Path, questions: Path, micro_bundle: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    table, rows = unlabelled_table(questions, tmp_path)
    code, out, err = run([str(head), "--data", str(table), "--bundle", str(micro_bundle)], capsys)
    assert code == 0
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["ref"] for a in answers] == [f"row {n}" for n in range(1, 7)]
    assert [a["text"] for a in answers] == [r["text"] for r in rows]
    assert "error" in answers[1] and "error" in answers[3] and "probabilities" not in answers[1]
    assert "6 pairs, 4 answered" in err and "2 not" in err
    # the answers are the head's own predictions on the bundle's features (as `fuse eval` computes them)
    loaded = load_head(head)
    feats = load_pairs(str(questions / "test.jsonl"), micro_bundle, cache_dir=tmp_path / "cache", progress=False)
    zi, zt = feats.pairs()
    expected = loaded.predict(zi[:6], zt[:6])
    for i in (0, 2, 4, 5):
        got = [answers[i]["probabilities"][label] for label in loaded.labels]
        np.testing.assert_allclose(got, expected[i], atol=1e-5)
        assert answers[i]["top"] == loaded.labels[int(expected[i].argmax())]


def test_predict_writes_a_file_whole_and_reads_shards(
    head: Path, questions: Path, micro_bundle: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    rows = [json.loads(line) for line in (questions / "test.jsonl").read_text().splitlines()][:3]
    shard = tmp_path / "ask.tar"
    members = [(f"q{i:03d}", (questions / r["image"]).read_bytes(), r["text"].encode()) for i, r in enumerate(rows)]
    members.insert(1, ("bad", b"not an image", b"is it red?"))
    with tarfile.open(shard, "w") as tar:
        for key, image, text in [*members, ("notext", members[0][1], None)]:
            for ext, data in (("jpg", image), ("txt", text)):
                if data is not None:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "answers" / "a.jsonl"
    code, stdout, err = run([str(head), "--data", str(shard), "--bundle", str(micro_bundle), "--out", str(out)], capsys)
    assert code == 0 and stdout == "" and f"-> {out}" in err
    assert "4 pairs, 3 answered" in err and "1 not" in err and "shard samples that are not pairs" in err, err
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["ref"] for a in answers] == [f"{shard}:{key}" for key in ("q000", "bad", "q001", "q002")]
    assert "error" in answers[1] and all("top" in a for a in answers[:1] + answers[2:])
    assert [p.name for p in out.parent.iterdir()] == ["a.jsonl"]  # no temporary file left behind
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600

    from clipforge.fusion.predict import predict_rows

    pairs = list(predict_rows(load_head(head), micro_bundle, str(shard), progress=False))
    assert [r.data is None for r, _ in pairs] == [False, True, False, False]  # failed bytes are not held


def test_predict_refuses_a_head_of_another_bundle_and_bad_tables_in_one_line(
    head: Path,
    questions: Path,
    other_bundle: Path,  # noqa: F811
    tmp_path: Path,
    capsys,
) -> None:  # type: ignore[no-untyped-def]
    table, _ = unlabelled_table(questions, tmp_path)
    out = tmp_path / "a.jsonl"
    code, _, err = run([str(head), "--data", str(table), "--bundle", str(other_bundle), "--out", str(out)], capsys)
    assert code == 1 and "trained on bundle" in err and err.count("\n") == 1 and not out.exists()
    no_text = tmp_path / "no-text.jsonl"
    no_text.write_text(json.dumps({"image": "x.jpg", "question": "?"}) + "\n")
    code, _, err = run([str(head), "--data", str(no_text)], capsys)
    assert code == 1 and "row 1 lacks one of the fields 'image', 'text'" in err and err.count("\n") == 1


def test_predict_refuses_outputs_and_inputs_that_give_no_answers_before_writing_anything(
    head: Path, questions: Path, micro_bundle: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    table, _ = unlabelled_table(questions, tmp_path)
    base = [str(head), "--bundle", str(micro_bundle)]
    (tmp_path / "adir").mkdir()
    code, _, err = run([*base, "--data", str(table), "--out", str(tmp_path / "adir")], capsys)
    assert (
        code == 1
        and err == f"clipforge: error: --out {tmp_path / 'adir'}: is a directory; give the name of the file to write\n"
    )
    code, _, err = run([*base, "--data", str(table), "--out", str(table / "x.jsonl")], capsys)
    assert code == 1 and f"--out {table / 'x.jsonl'}: {table} is a file, not a directory" in err
    # every image unreadable: a failure, not a file of error lines
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps({"image": str(tmp_path / "broken.jpg"), "text": t}) + "\n" for t in "abc"))
    out = tmp_path / "new" / "a.jsonl"
    code, _, err = run([*base, "--data", str(broken), "--out", str(out)], capsys)
    last = err.strip().splitlines()[-1]  # after the encoder's progress bar
    assert (
        code == 1 and last.startswith("clipforge: error: ") and "not one of its 3 pairs has an image that could" in last
    )
    assert not (tmp_path / "new").exists()  # nor its folder
    # shards with samples but no pairs say why
    shard = tmp_path / "notext.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("a.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    code, _, err = run([*base, "--data", str(shard)], capsys)
    assert (
        code == 1
        and err.strip().splitlines()[-1] == f"clipforge: error: {shard}: no (image, text) pairs (incomplete: 1)"
    )


def test_a_head_finds_its_bundle_from_any_directory_or_says_to_give_it(
    head: Path, questions: Path, micro_bundle: Path, tmp_path: Path, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    recorded = json.loads((head / "head.json").read_text())["provenance"]["bundle"]
    assert Path(recorded).is_absolute() and Path(recorded).samefile(micro_bundle)
    table, _ = unlabelled_table(questions, tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, _ = run([str(head), "--data", str(table)], capsys)
    assert code == 0 and len(out.splitlines()) == 6
    moved = tmp_path / "moved-head"
    moved.mkdir()
    meta = json.loads((head / "head.json").read_text())
    meta["provenance"]["bundle"] = "runs/elsewhere/bundle"
    (moved / "head.json").write_text(json.dumps(meta))
    (moved / "head.safetensors").write_bytes((head / "head.safetensors").read_bytes())
    code, _, err = run([str(moved), "--data", str(table)], capsys)
    assert code == 1 and "records, runs/elsewhere/bundle, is not there: give --bundle" in err


def test_predict_streams_in_chunks_and_keeps_the_order_when_the_first_images_fail(
    head: Path, questions: Path, micro_bundle: Path, tmp_path: Path, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from clipforge.fusion import predict

    monkeypatch.setattr(predict, "CHUNK", 2)  # 6 pairs: three chunks
    rows = [json.loads(line) for line in (questions / "test.jsonl").read_text().splitlines()][:6]
    table = [{"image": str((questions / r["image"]).resolve()), "text": r["text"]} for r in rows]
    for i in (0, 1, 2):  # the whole first chunk and the start of the second: held back, then written in order
        table[i]["image"] = str(tmp_path / f"missing{i}.jpg")
    path = tmp_path / "ask.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in table))
    code, out, err = run([str(head), "--data", str(path), "--bundle", str(micro_bundle)], capsys)
    answers = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [a["ref"] for a in answers] == [f"row {n}" for n in range(1, 7)]
    assert ["error" in a for a in answers] == [True, True, True, False, False, False]
    assert "6 pairs, 3 answered" in err


def test_predict_html_shows_the_first_pairs_images_texts_and_answers(
    head: Path, questions: Path, micro_bundle: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    from html.parser import HTMLParser

    table, rows = unlabelled_table(questions, tmp_path)
    with table.open("a") as f:  # a text that must be shown, not run
        f.write(
            json.dumps({"image": str((questions / rows[0]["image"]).resolve()), "text": "<script>x()</script>"}) + "\n"
        )
    page = tmp_path / "page" / "answers.html"
    args = [str(head), "--data", str(table), "--bundle", str(micro_bundle), "--html", str(page), "--html-limit", "7"]
    code, out, err = run(args, capsys)
    assert code == 0 and len(out.splitlines()) == 7 and f"page of the first 7: {page}" in err

    class Cards(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.cards: list[dict] = []
            self.scripts = 0

        def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
            a = dict(attrs)
            if tag == "script":
                self.scripts += 1
            if tag == "div" and (a.get("class") or "").startswith("pair"):
                self.cards.append({"ref": a["data-ref"], "error": "error" in a["class"], "img": False})
            if tag == "img" and self.cards:
                self.cards[-1]["img"] = a["src"].startswith("data:image/jpeg;base64,")

    parsed = Cards()
    parsed.feed(page.read_text())
    assert [c["ref"] for c in parsed.cards] == [f"row {n}" for n in range(1, 8)]
    assert [c["error"] for c in parsed.cards] == [False, True, False, True, False, False, False]
    assert [c["img"] for c in parsed.cards] == [True, False, True, False, True, True, True]
    assert parsed.scripts == 0 and "&lt;script&gt;x()&lt;/script&gt;" in page.read_text()
    assert page.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    # fewer shown than answered: the page says so
    run([*args[:-1], "3"], capsys)
    assert "The first 3 of 7 pairs" in page.read_text()
