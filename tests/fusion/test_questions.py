"""The synth's question set: balanced, colour AND shape needed, held-out combinations kept out of training."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from clipforge.training.synth import HELDOUT, write_synth


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_questions_are_balanced_and_hold_out_combinations(questions: Path) -> None:
    train, test = rows(questions / "train.jsonl"), rows(questions / "test.jsonl")
    assert len(train) == 6 * 40 and len(test) == 6 * 16
    for split in (train, test):
        assert Counter(r["label"] for r in split) == {"yes": len(split) // 2, "no": len(split) // 2}
        misses = Counter(r["negative"] for r in split if r["label"] == "no")
        assert misses == {"colour_only": len(split) // 6, "shape_only": len(split) // 6, "neither": len(split) // 6}
        for r in split:
            same_colour, same_shape = r["q_color"] == r["color"], r["q_shape"] == r["shape"]
            assert (r["label"] == "yes") == (same_colour and same_shape)  # the answer needs both
            assert r["negative"] in (
                None,
                {(True, False): "colour_only", (False, True): "shape_only", (False, False): "neither"}.get(
                    (same_colour, same_shape)
                ),
            )
            assert r["q_color"] in r["text"] and r["q_shape"] in r["text"]
            assert (questions / r["image"]).is_file()
    held = set(HELDOUT)
    assert not any((r["color"], r["shape"]) in held or (r["q_color"], r["q_shape"]) in held for r in train)
    assert not any(r["heldout"] for r in train)
    for r in test:
        assert r["heldout"] == ((r["color"], r["shape"]) in held or (r["q_color"], r["q_shape"]) in held)
    assert len({r["text"].replace(r["q_color"], "C").replace(r["q_shape"], "S") for r in train}) >= 4  # wordings


def test_write_synth_other_outputs_do_not_change(tmp_path: Path) -> None:
    """The question set draws from its own random stream: shards and zero-shot images stay byte-identical."""
    a = write_synth(tmp_path / "a", train=12, val=4, per_class=1, shard_size=10, seed=2, questions=0)
    b = write_synth(tmp_path / "b", train=12, val=4, per_class=1, shard_size=10, seed=2, questions=5)
    assert b["questions"]["pairs"]["train"] == 30 and a["questions"]["pairs"]["train"] == 0
    files = sorted(
        p.relative_to(tmp_path / "a")
        for p in (tmp_path / "a").rglob("*")
        if p.is_file() and "questions" not in p.parts and p.name != "synth.json"
    )
    assert len(files) > 30
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_three_way_questions_are_balanced_and_their_answers_follow_from_the_image(questions: Path) -> None:
    """yes: the asked shape is there in the asked colour; no: it is there in another colour; absent: the asked
    shape is not there (half of these name the image's colour). Same images as the yes/no task."""
    train, test = rows(questions / "3way-train.jsonl"), rows(questions / "3way-test.jsonl")
    assert len(train) == 6 * 40 and len(test) == 6 * 16
    for split in (train, test):
        third = len(split) // 3
        assert Counter(r["label"] for r in split) == {"yes": third, "no": third, "absent": third}
        absent = Counter(r["relation"] for r in split if r["label"] == "absent")
        assert absent == {"colour_only": third // 2, "neither": third // 2}
        for r in split:
            same_colour, same_shape = r["q_color"] == r["color"], r["q_shape"] == r["shape"]
            assert r["label"] == ("absent" if not same_shape else "yes" if same_colour else "no")
            assert (
                r["relation"]
                == {
                    (True, True): "match",
                    (False, True): "shape_only",
                    (True, False): "colour_only",
                    (False, False): "neither",
                }[(same_colour, same_shape)]
            )
            assert r["q_color"] in r["text"] and r["q_shape"] in r["text"] and r["text"].endswith("?")
            assert (questions / r["image"]).is_file()
        by_image: dict[str, list[str]] = {}
        for r in split:
            if r["label"] == "yes":
                by_image.setdefault(r["image"], []).append(r["text"])
        assert all(len(set(texts)) == 2 for texts in by_image.values())  # two wordings, not one row twice
    held = set(HELDOUT)
    assert not any((r["color"], r["shape"]) in held or (r["q_color"], r["q_shape"]) in held for r in train)
    for r in test:
        assert r["heldout"] == ((r["color"], r["shape"]) in held or (r["q_color"], r["q_shape"]) in held)
    yes_no = rows(questions / "train.jsonl")
    assert {r["image"] for r in train} == {r["image"] for r in yes_no}  # one set of images, two tasks


def test_an_older_set_gets_the_three_way_task_for_its_own_images(tmp_path: Path) -> None:
    """The fusion step found the 3-way tables missing in a set written before them and rewrote the whole set at
    the default size and seed: the yes/no tables and images the user had were replaced."""
    from clipforge.training.synth import ensure_questions, write_questions

    out = tmp_path / "q"
    write_questions(out, train=7, test=3, seed=5)
    fresh = {f: (out / f).read_bytes() for f in ("3way-train.jsonl", "3way-test.jsonl")}
    for f in fresh:
        (out / f).unlink()
    meta = json.loads((out / "questions.json").read_text())
    del meta["3way"]  # as an older set's summary
    (out / "questions.json").write_text(json.dumps(meta))
    before = {p.name: p.read_bytes() for p in [*(out / "images").iterdir(), out / "train.jsonl", out / "test.jsonl"]}
    summary = ensure_questions(out)
    assert {
        p.name: p.read_bytes() for p in [*(out / "images").iterdir(), out / "train.jsonl", out / "test.jsonl"]
    } == before
    assert {f: (out / f).read_bytes() for f in fresh} == fresh  # the same rows a fresh write gives
    assert summary["3way"]["labels"] == ["yes", "no", "absent"]
    assert json.loads((out / "questions.json").read_text())["3way"] == summary["3way"]
    assert ensure_questions(out) == summary  # complete: nothing rewritten


def test_a_tiny_synth_still_has_questions_to_train_on(tmp_path: Path) -> None:
    """`data synth --train 13` wrote question tables without a single row (1,500 is 7.5% of 20,000)."""
    summary = write_synth(tmp_path / "s", train=13, val=2, per_class=1, shard_size=10, seed=1)
    assert summary["questions"]["images"] == {"train": 1, "test": 1}
    for table in ("train.jsonl", "test.jsonl", "3way-train.jsonl", "3way-test.jsonl"):
        assert len(rows(tmp_path / "s" / "questions" / table)) == 6


def test_binding_questions_need_which_colour_goes_with_which_shape(questions: Path) -> None:
    """Two shapes per scene; the "no" answers include both swaps, whose words are all in the picture."""
    train, test = rows(questions / "binding-train.jsonl"), rows(questions / "binding-test.jsonl")
    assert len(train) == 6 * 40 and len(test) == 6 * 16
    held = set(HELDOUT)
    for split in (train, test):
        assert Counter(r["label"] for r in split) == {"yes": len(split) // 2, "no": len(split) // 2}
        assert Counter(r["relation"] for r in split)["swapped"] == len(split) // 3
        for r in split:
            objects = [tuple(o.split()) for o in r["objects"]]
            (c1, s1), (c2, s2) = objects
            assert c1 != c2 and s1 != s2 and (questions / r["image"]).is_file()
            q = (r["q_color"], r["q_shape"])
            assert (r["label"] == "yes") == (q in objects)  # the answer: is that colour ON that shape
            colour_in, shape_in = q[0] in (c1, c2), q[1] in (s1, s2)
            relation = {(True, True): "swapped", (True, False): "colour_only", (False, True): "shape_only"}
            assert r["relation"] == ("match" if q in objects else relation[colour_in, shape_in])
            assert r["q_color"] in r["text"] and r["q_shape"] in r["text"]
            assert not r["text"].startswith(("is this ", f"is the {r['q_shape']}"))  # wordings that presume one shape
            # a bag of concepts (which colours and shapes are present) is the same for a match and a swap
            if r["relation"] in ("match", "swapped"):
                assert {q[0], q[1]} <= {c1, c2, s1, s2}
    parts = Counter(r["relation"] for r in train + test if r["relation"] in ("colour_only", "shape_only"))
    assert parts["colour_only"] > 0 and parts["shape_only"] > 0
    assert not any(r["heldout"] for r in train)
    assert not any(tuple(o.split()) in held for r in train for o in r["objects"])
    assert not any((r["q_color"], r["q_shape"]) in held for r in train)
    for r in test:
        touches = any(tuple(o.split()) in held for o in r["objects"]) or (r["q_color"], r["q_shape"]) in held
        assert r["heldout"] == touches


def test_an_older_set_gets_the_binding_task_and_nothing_else_changes(tmp_path: Path) -> None:
    from clipforge.training.synth import ensure_questions, write_questions

    out = tmp_path / "q"
    write_questions(out, train=7, test=3, seed=5)
    fresh = {f: (out / f).read_bytes() for f in ("binding-train.jsonl", "binding-test.jsonl")}
    for p in [out / f for f in fresh] + list((out / "images").glob("binding-*")):
        p.unlink()
    meta = json.loads((out / "questions.json").read_text())
    del meta["binding"]  # as an older set's summary
    (out / "questions.json").write_text(json.dumps(meta))
    before = {p.name: p.read_bytes() for p in [*(out / "images").iterdir(), *out.glob("*.jsonl")]}
    summary = ensure_questions(out)
    assert {f: (out / f).read_bytes() for f in fresh} == fresh  # the same scenes and rows a fresh write gives
    assert {
        p.name: p.read_bytes() for p in [*(out / "images").iterdir(), *out.glob("*.jsonl")] if p.name in before
    } == before
    assert len(list((out / "images").glob("binding-*"))) == 10 and summary["binding"]["pairs"] == {
        "train": 42,
        "test": 18,
    }
    assert ensure_questions(out) == summary  # complete: nothing rewritten


def test_an_older_set_without_image_counts_gets_a_binding_task_of_its_size(tmp_path: Path) -> None:
    """A questions.json without "images" got the default 1,500 + 600 scenes whatever the set's size."""
    from clipforge.training.synth import ensure_questions, write_questions

    out = tmp_path / "q"
    write_questions(out, train=5, test=3, seed=2)
    for p in [out / "binding-train.jsonl", out / "binding-test.jsonl", *(out / "images").glob("binding-*")]:
        p.unlink()
    meta = json.loads((out / "questions.json").read_text())
    del meta["binding"], meta["images"]
    (out / "questions.json").write_text(json.dumps(meta))
    assert ensure_questions(out)["binding"]["pairs"] == {"train": 30, "test": 18}  # its 5 + 3 images' worth
    assert len(list((out / "images").glob("binding-*"))) == 8


def test_binding_part_misses_are_balanced_at_scale() -> None:
    import random

    from clipforge.training.synth import EVERY, binding_rows

    rng = random.Random(0)
    kinds = Counter()
    for _ in range(2000):
        (c1, s1), (c2, s2) = rng.sample([cs for cs in EVERY if cs[0] == "red"], 1) + rng.sample(
            [cs for cs in EVERY if cs[0] == "blue"], 1
        )
        if s1 == s2:
            continue
        kinds.update(r["relation"] for r in binding_rows([(c1, s1), (c2, s2)], rng, EVERY) if r["label"] == "no")
    part = kinds["colour_only"] + kinds["shape_only"]
    assert kinds["swapped"] == 2 * part and abs(kinds["colour_only"] / part - 0.5) < 0.05
