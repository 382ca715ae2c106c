"""`clipforge data synth`: a captioned coloured-shapes set for demos and tests.

Training shards never show the held-out colour+shape combinations; the folder-per-class zero-shot set
contains all of them, so zero-shot top-1 on held-out classes measures compositional generalisation.
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import webdataset as wds
from PIL import Image, ImageDraw
from tqdm import tqdm

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
HELDOUT = (
    ("red", "circle"),
    ("green", "square"),
    ("blue", "triangle"),
    ("yellow", "cross"),
    ("purple", "ring"),
    ("orange", "square"),
)
POSITIONS = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7), "middle": (0.5, 0.5)}
TEMPLATES = (
    "a {color} {shape}",
    "a photo of a {size} {color} {shape}",
    "a {shape} coloured {color}",
    "{color} {shape} on a grey background",
    "there is a {color} {shape} on the {pos}",
    "a {size} {shape}, {color}",
    "an image showing a {color} {shape}",
    "the {shape} is {color}",
    "a drawing of a {color} {shape} in the {pos}",
    "{size} {color} {shape}",
)


def class_name(color: str, shape: str) -> str:
    return f"{color} {shape}"


def draw_shape(color: str, shape: str, rng: random.Random, size: int = 64) -> tuple[Image.Image, dict]:
    bg = rng.randint(70, 190)
    im = Image.new("RGB", (size, size), (bg, bg, bg))
    d = ImageDraw.Draw(im)
    pos = rng.choice(list(POSITIONS))
    big = rng.random() < 0.5
    r = size * (rng.uniform(0.22, 0.3) if big else rng.uniform(0.12, 0.18))
    cx = size * POSITIONS[pos][0] + rng.uniform(-3, 3)
    cy = size * POSITIONS[pos][1] + rng.uniform(-3, 3)
    paint(d, color, shape, cx, cy, r, rng)
    attrs = {"color": color, "shape": shape, "pos": pos, "size": "large" if big else "small"}
    return im, attrs


def paint(d: ImageDraw.ImageDraw, color: str, shape: str, cx: float, cy: float, r: float, rng: random.Random) -> None:
    """One shape of radius r at (cx, cy), its colour jittered."""
    fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLORS[color])
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "ring":
        d.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        a = rng.uniform(-0.3, 0.3)
        pts = [
            (cx + r * math.sin(a + k * 2 * math.pi / 3), cy - r * math.cos(a + k * 2 * math.pi / 3)) for k in range(3)
        ]
        d.polygon(pts, fill=fill)
    elif shape == "cross":
        t = r / 3
        d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)


def draw_pair(objects: list[tuple[str, str]], rng: random.Random, size: int = 64) -> tuple[Image.Image, str]:
    """Two shapes, the first on the left (or top), the second on the right (or bottom): a red square and a blue
    circle. The caller draws the objects at random, so which one comes first is random too."""
    bg = rng.randint(70, 190)
    im = Image.new("RGB", (size, size), (bg, bg, bg))
    d = ImageDraw.Draw(im)
    layout = rng.choice(("left-right", "top-bottom"))
    spots = [(0.28, 0.5), (0.72, 0.5)] if layout == "left-right" else [(0.5, 0.28), (0.5, 0.72)]
    for (color, shape), (fx, fy) in zip(objects, spots, strict=True):
        r = size * rng.uniform(0.13, 0.19)
        paint(d, color, shape, size * fx + rng.uniform(-2, 2), size * fy + rng.uniform(-2, 2), r, rng)
    return im, layout


def caption_for(attrs: dict, rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(**attrs)


def jpeg_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_synth(
    out: str | Path,
    *,
    train: int = 20_000,
    val: int = 1000,
    per_class: int = 20,
    shard_size: int = 1000,
    seed: int = 0,
    questions: int | None = None,
) -> dict:
    """Write train/ and val/ shards, a zeroshot/ folder-per-class set and a questions/ set (`write_questions`
    with `questions` training images, default 7.5% of `train`: 1500 for the default 20,000) under `out`."""
    out = Path(out)
    rng = random.Random(seed)
    seen = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELDOUT]
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in (("train", train), ("val", val)):
        pattern = str(out / split / "shard-%06d.tar")
        # integer mtime: a float one costs a PAX header per member (twice the tar parsing) and varies run to run
        with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, mtime=0) as sink:
            for i in tqdm(range(n), desc=f"synth {split}", unit="img", mininterval=1.0):
                color, shape = rng.choice(seen)
                im, attrs = draw_shape(color, shape, rng)
                sink.write(
                    {
                        "__key__": f"{i:08d}",
                        "jpg": jpeg_bytes(im),
                        "txt": caption_for(attrs, rng),
                        "json": json.dumps(attrs),
                    }
                )
        counts[split] = n
    zs = out / "zeroshot"
    for color in COLORS:
        for shape in SHAPES:
            d = zs / class_name(color, shape).replace(" ", "_")
            d.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                im, _ = draw_shape(color, shape, rng)
                im.save(d / f"{j:04d}.jpg", quality=90)
    heldout = [class_name(c, s) for c, s in HELDOUT]
    (zs / "subsets.json").write_text(json.dumps({"heldout": heldout}, indent=2))
    n_train_shards = len(list((out / "train").glob("*.tar")))
    summary = {
        "train": f"{out / 'train'}/shard-{{000000..{n_train_shards - 1:06d}}}.tar",
        "val": f"{out / 'val'}/shard-{{000000..{len(list((out / 'val').glob('*.tar'))) - 1:06d}}}.tar",
        "zeroshot": str(zs),
        "classes": len(COLORS) * len(SHAPES),
        "heldout_classes": heldout,
        "counts": counts,
    }
    n_q = max(1, train * 3 // 40) if questions is None else questions  # at least one image per split
    n_test = max(1, n_q * 2 // 5) if n_q else 0
    summary["questions"] = write_questions(out / "questions", train=n_q, test=n_test, seed=seed)
    (out / "synth.json").write_text(json.dumps(summary, indent=2))
    return summary


# --- a question set for fusion heads: yes/no answers that need colour AND shape together ----------------
QUESTIONS = (
    "is there a {color} {shape}?",
    "does the picture show a {color} {shape}?",
    "is this a {color} {shape}?",
    "can you see a {shape} coloured {color}?",
    "is the {shape} in the image {color}?",
    "{color} {shape}: yes or no?",
)


def _question_rows(color: str, shape: str, rng: random.Random, allowed: list[tuple[str, str]]) -> list[dict]:
    """Three yes questions (distinct wordings) and three no questions about one image, one per kind of miss:
    only the colour matches, only the shape matches, neither. Held-out sets are balanced by construction, and
    a head that looks at one side alone (or adds the two) is at chance: the answer is an interaction."""
    misses = {
        "colour_only": [(c, s) for c, s in allowed if c == color and s != shape],
        "shape_only": [(c, s) for c, s in allowed if c != color and s == shape],
        "neither": [(c, s) for c, s in allowed if c != color and s != shape],
    }
    rows: list[dict] = [
        {"q_color": color, "q_shape": shape, "label": "yes", "negative": None, "wording": w}
        for w in rng.sample(range(len(QUESTIONS)), 3)
    ]
    for negative, combos in misses.items():
        c, s = rng.choice(combos)
        rows.append(
            {"q_color": c, "q_shape": s, "label": "no", "negative": negative, "wording": rng.randrange(len(QUESTIONS))}
        )
    for r in rows:
        r["text"] = QUESTIONS[r.pop("wording")].format(color=r["q_color"], shape=r["q_shape"])
    return rows


# The same images, a second task: "is the circle red?" answered yes / no / absent. The answer is not a
# similarity: "no" (the circle is there, in another colour) and "absent" (no circle; maybe a red square) are
# both part-matches, so a threshold on cos(image, question) cannot tell them apart -- the `late` baseline's
# weak spot by construction -- while a head that sees which part matches can.
THREEWAY = (
    "is the {shape} {color}?",
    "is the {shape} in the picture {color}?",
    "is the {shape} coloured {color}?",
    "what about the {shape}: is it {color}?",
)
THREEWAY_LABELS = ("yes", "no", "absent")


def threeway_rows(color: str, shape: str, rng: random.Random, allowed: list[tuple[str, str]]) -> list[dict]:
    """Two questions per answer about one image: yes (its shape, its colour; two wordings), no (its shape,
    another colour), absent (another shape: one with its colour, one with neither)."""
    picks = {
        "match": [(color, shape)],
        "shape_only": [(c, s) for c, s in allowed if s == shape and c != color],
        "colour_only": [(c, s) for c, s in allowed if s != shape and c == color],
        "neither": [(c, s) for c, s in allowed if s != shape and c != color],
    }
    plan = [("yes", "match")] * 2 + [("no", "shape_only")] * 2 + [("absent", "colour_only"), ("absent", "neither")]
    rows, yes_wordings = [], rng.sample(THREEWAY, 2)  # the two yes questions are two different wordings
    for k, (label, relation) in enumerate(plan):
        c, s = rng.choice(picks[relation])
        text = (yes_wordings[k] if relation == "match" else rng.choice(THREEWAY)).format(color=c, shape=s)
        rows.append({"q_color": c, "q_shape": s, "label": label, "relation": relation, "text": text})
    return rows


# A third task, on scenes of TWO shapes: "is there a red circle?" about a red square beside a blue circle.
# Both words of the question are in the picture, bound to the wrong objects ("swapped"): anything that only
# registers which colours and shapes are present -- a bag of concepts, as contrastive embeddings are often
# said to be -- cannot tell that from a match. The bundle never saw two-shape scenes (its captions describe
# one shape), so this also asks how much of the binding its features keep at all.
BINDING_RELATIONS = ("match", "swapped", "colour_only", "shape_only")
# the yes/no wordings that fit a scene of two shapes ("is this a red circle?" and "is the circle in the image
# red?" presume one shape)
BINDING_QUESTIONS = tuple(q for q in QUESTIONS if not q.startswith(("is this ", "is the {shape}")))


def binding_rows(objects: list[tuple[str, str]], rng: random.Random, allowed: list[tuple[str, str]]) -> list[dict]:
    """Three yes (each object, then one again in another wording) and three no: both swaps, and one question
    with one part absent from the picture (its colour with a shape it lacks, or the reverse)."""
    (c1, s1), (c2, s2) = objects
    colours, shapes = {c1, c2}, {s1, s2}
    part = {
        "colour_only": [(c, s) for c, s in allowed if c in colours and s not in shapes],
        "shape_only": [(c, s) for c, s in allowed if c not in colours and s in shapes],
    }
    kind = rng.choice([k for k, combos in part.items() if combos])  # each kind of part-miss equally often
    plan = [("yes", "match", c1, s1), ("yes", "match", c2, s2), ("yes", "match", *rng.choice(objects))]
    plan += [("no", "swapped", c1, s2), ("no", "swapped", c2, s1), ("no", kind, *rng.choice(part[kind]))]
    wordings = rng.sample(BINDING_QUESTIONS, 3) + [rng.choice(BINDING_QUESTIONS) for _ in range(3)]  # yes: distinct
    return [
        {"q_color": c, "q_shape": sh, "label": label, "relation": rel, "text": w.format(color=c, shape=sh)}
        for (label, rel, c, sh), w in zip(plan, wordings, strict=True)
    ]


def write_binding(out: Path, *, train: int, test: int, seed: int) -> dict:
    """`out`/images/binding-*.jpg (two shapes each: two colours, two shapes) and binding-train.jsonl /
    binding-test.jsonl, from their own random stream. Training scenes use only seen combinations, their swaps
    included; test scenes any; a row whose objects or question touch a held-out combination is heldout."""
    rng = random.Random(seed + 3_571_113)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n, combos in (("train", train, SEEN), ("test", test, EVERY)):
        lines = []
        for i in range(n):
            while True:  # two objects of different colours and shapes whose swaps are allowed questions too
                (c1, s1), (c2, s2) = rng.choice(combos), rng.choice(combos)
                if c1 != c2 and s1 != s2 and (c1, s2) in combos and (c2, s1) in combos:
                    break
            objects = [(c1, s1), (c2, s2)]
            im, layout = draw_pair(objects, rng)
            name = f"images/binding-{split}-{i:06d}.jpg"
            im.save(out / name, quality=90)
            scene = {"image": name, "objects": [f"{c} {s}" for c, s in objects], "layout": layout}
            for r in binding_rows(objects, rng, combos):
                held = any(o in HELDOUT for o in objects) or (r["q_color"], r["q_shape"]) in HELDOUT
                lines.append(json.dumps({**scene, **r, "heldout": held}))
        _write_table(out / f"binding-{split}.jsonl", lines)
        counts[split] = len(lines)
    return {
        "train": str(out / "binding-train.jsonl"),
        "test": str(out / "binding-test.jsonl"),
        "pairs": counts,
        "relations": list(BINDING_RELATIONS),
    }


def write_questions(out: str | Path, *, train: int = 1500, test: int = 600, seed: int = 0) -> dict:
    """`out`/images/*.jpg and two tasks on them, six questions per image each:
    train.jsonl / test.jsonl, yes/no ("is there a red circle?"), and 3way-train.jsonl / 3way-test.jsonl,
    yes/no/absent ("is the circle red?"); and a third on as many two-shape scenes, binding-train.jsonl /
    binding-test.jsonl (`write_binding`).

    train: images and questions only of the seen colour+shape combinations; test: images of all 30
    combinations, questions about any; its rows touching a held-out combination carry heldout=true."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 7919)  # its own stream: write_synth's other outputs do not change
    counts: dict[str, int] = {}
    images: dict[str, list[dict]] = {}
    for split, n, combos in (("train", train, SEEN), ("test", test, EVERY)):
        lines, images[split] = [], []
        for i in range(n):
            color, shape = rng.choice(combos)
            im, attrs = draw_shape(color, shape, rng)
            name = f"images/{split}-{i:06d}.jpg"
            im.save(out / name, quality=90)
            images[split].append({"image": name, **attrs})
            for r in _question_rows(color, shape, rng, combos):
                lines.append(json.dumps({"image": name, **attrs, **r, "heldout": _held(color, shape, r)}))
        _write_table(out / f"{split}.jsonl", lines)
        counts[split] = len(lines)
    summary = {
        "train": str(out / "train.jsonl"),
        "test": str(out / "test.jsonl"),
        "pairs": counts,
        "images": {"train": train, "test": test},
        "wordings": len(QUESTIONS),
        "seed": seed,
        "3way": write_threeway(out, images, seed),
        "binding": write_binding(out, train=train, test=test, seed=seed),
    }
    (out / "questions.json").write_text(json.dumps(summary, indent=2))
    return summary


EVERY = [(c, s) for c in COLORS for s in SHAPES]
SEEN = [cs for cs in EVERY if cs not in HELDOUT]


def _held(color: str, shape: str, row: dict) -> bool:
    return (color, shape) in HELDOUT or (row["q_color"], row["q_shape"]) in HELDOUT


def _write_table(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def write_threeway(out: Path, images: dict[str, list[dict]], seed: int) -> dict:
    """The yes/no/absent task's tables for `images` ({split: [{"image", "color", "shape", ...}]}), from its own
    random stream: the same images and seed always give the same rows, whether written with the yes/no task or
    added later to a set that lacks them (`ensure_questions`)."""
    rng = random.Random(seed + 104_729)
    for split, combos in (("train", SEEN), ("test", EVERY)):
        lines = [
            json.dumps({**im, **r, "heldout": _held(im["color"], im["shape"], r)})
            for im in images.get(split, [])
            for r in threeway_rows(im["color"], im["shape"], rng, combos)
        ]
        _write_table(out / f"3way-{split}.jsonl", lines)
    return {
        "train": str(out / "3way-train.jsonl"),
        "test": str(out / "3way-test.jsonl"),
        "labels": list(THREEWAY_LABELS),
        "wordings": len(THREEWAY),
    }


def ensure_questions(out: str | Path) -> dict:
    """The question set under `out`, every task: written (default size) if absent; a set written before the
    yes/no/absent task existed gets that task added for ITS images, its yes/no tables and images untouched;
    one without the binding task gets it (its own scenes, as many as the set has images)."""
    out = Path(out)
    meta_path = out / "questions.json"
    if not meta_path.is_file():
        return write_questions(out)
    summary = json.loads(meta_path.read_text())
    if not all((out / f"binding-{split}.jsonl").is_file() for split in ("train", "test")):
        n = summary.get("images") or {split: len(_table_images(out / f"{split}.jsonl")) for split in ("train", "test")}
        seed = int(summary.get("seed", 0))
        summary["binding"] = write_binding(out, train=n.get("train", 0), test=n.get("test", 0), seed=seed)
        meta_path.write_text(json.dumps(summary, indent=2))
    if all((out / f"3way-{split}.jsonl").is_file() for split in ("train", "test")):
        return summary
    images = {split: _table_images(out / f"{split}.jsonl") for split in ("train", "test")}
    summary["3way"] = write_threeway(out, images, int(summary.get("seed", 0)))
    meta_path.write_text(json.dumps(summary, indent=2))
    return summary


def _table_images(table: Path) -> list[dict]:
    """A one-shape table's images, each once, in the order they were written, from their first row."""
    rows = [json.loads(line) for line in table.read_text().splitlines() if line.strip()] if table.is_file() else []
    firsts: dict[str, dict] = {}
    for r in rows:
        firsts.setdefault(r["image"], r)
    return [{k: r[k] for k in ("image", "color", "shape", "pos", "size")} for r in firsts.values()]
