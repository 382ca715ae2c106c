"""Zero-shot classification on a folder-per-class set, and image<->text retrieval on held-out shards.

Works on any `Encoder` (a loaded bundle, or the model being trained in a `TorchEncoder`) with the model's
eval preprocessing (`Bundle.preprocess`, or `encoders.model.eval_preprocess(preprocess settings)`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from clipforge.data.shards import iter_pairs, skip_reasons
from clipforge.encoders.backends import Encoder
from clipforge.encoders.images import IMAGE_EXTENSIONS, ImageDecodeError, load_image
from clipforge.encoders.model import Preprocess
from clipforge.encoders.prompts import DEFAULT_TEMPLATES, check_templates, class_embeddings
from clipforge.training.diagnostics import coordination_diagnostics


def list_classes(folder: Path) -> list[tuple[str, list[Path]]]:
    """(class name, image paths) per sub-folder; '_' in folder names reads as a space."""
    if not folder.is_dir():
        raise FileNotFoundError(f"zero-shot set {folder} is not a directory")
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in d.iterdir() if f.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
        if files:
            out.append((d.name.replace("_", " "), files))
    if len(out) < 2:
        raise ValueError(f"zero-shot set {folder} needs at least 2 class folders with images")
    return out


def zeroshot_set(folder: Path) -> tuple[list[tuple[str, list[Path]]], dict[str, list[str]]]:
    """The set's classes (`list_classes`) and its named subsets (`read_subsets`), checked: callers use it to
    refuse a bad set before a slow model load or training run, as the evaluation would refuse it."""
    classes = list_classes(folder)
    return classes, read_subsets(folder / "subsets.json", [name for name, _ in classes])


def _batches(items: list[Any], n: int) -> Any:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@torch.inference_mode()
def zeroshot_eval(
    encoder: Encoder,
    preprocess: Preprocess,
    folder: str | Path,
    templates: tuple[str, ...] = DEFAULT_TEMPLATES,
    batch_size: int = 256,
) -> dict[str, Any]:
    folder = Path(folder)
    templates = check_templates(templates)
    classes, subsets = zeroshot_set(folder)
    names = [c for c, _ in classes]
    weights = torch.from_numpy(class_embeddings(encoder, names, templates))  # [C, D]
    items = [(path, label) for label, (_, paths) in enumerate(classes) for path in paths]
    correct1 = torch.zeros(len(names))
    correct5 = torch.zeros(len(names))
    totals = torch.zeros(len(names))
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    bad = 0
    for chunk in _batches(items, batch_size):
        images, labels = [], []
        for path, label in chunk:
            try:
                images.append(load_image(path))
                labels.append(label)
            except ImageDecodeError:
                bad += 1
        if not images:
            continue
        feats = encoder.encode_images(preprocess(images))  # [N, D]
        logits = feats @ weights.T  # [N, C]
        top = logits.topk(min(5, len(names)), dim=-1).indices  # [N, 5]
        y = torch.tensor(labels)
        hit1 = top[:, 0] == y
        hit5 = (top == y[:, None]).any(-1)
        for i, lab in enumerate(labels):
            totals[lab] += 1
            correct1[lab] += float(hit1[i])
            correct5[lab] += float(hit5[i])
            confusion[lab, top[i, 0]] += 1
    if not totals.sum():
        raise ValueError(f"zero-shot set {folder}: none of its {len(items)} images could be decoded")
    n = totals.sum()
    per_class = {name: float(correct1[i] / max(1.0, float(totals[i]))) for i, name in enumerate(names)}
    result: dict[str, Any] = {
        "zeroshot_top1": float(correct1.sum() / n),
        "zeroshot_top5": float(correct5.sum() / n),
        "zeroshot_chance": 1.0 / len(names),
        "zeroshot_per_class": per_class,
        "zeroshot_classes": names,
        "zeroshot_confusion": confusion.tolist(),
        "zeroshot_images": int(totals.sum()),
        "zeroshot_bad_images": bad,
    }
    for subset, members in subsets.items():
        idx = [names.index(m) for m in members]
        result[f"zeroshot_top1_{subset}"] = float(correct1[idx].sum() / totals[idx].sum().clamp(min=1))
    return result


def read_subsets(path: Path, classes: list[str]) -> dict[str, list[str]]:
    """Named subsets of `classes`, e.g. {"heldout": [class names never seen in training]}; {} without a file.
    A name that is not one of `classes` is an error (dropping it would report a figure over fewer classes)."""
    if not path.is_file():
        return {}
    try:
        subsets = json.loads(path.read_text())
    except json.JSONDecodeError as exn:
        raise ValueError(f"{path} is not valid JSON ({exn})") from None
    valid = isinstance(subsets, dict) and all(
        isinstance(v, list) and all(isinstance(m, str) for m in v) for v in subsets.values()
    )
    if not valid:
        raise ValueError(f'{path} must map subset names to lists of class names, e.g. {{"heldout": ["red circle"]}}')
    known = set(classes)
    for subset, members in subsets.items():
        unknown = [m for m in members if m not in known]
        if unknown:
            shown = ", ".join(repr(m) for m in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
            raise ValueError(
                f"{path}: subset {subset!r} names {len(unknown)} class(es) not among the set's {len(classes)} "
                f"(its folders with images, '_' read as a space): {shown}"
            )
        if not members:
            raise ValueError(f"{path}: subset {subset!r} lists no classes")
    return subsets


def recall_at(sim: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """sim [N, N] with the true match of row i in column i."""
    ranks = (sim > sim.diagonal()[:, None]).sum(-1)  # [N] rank of the true match (0 = best)
    return {k: float((ranks < k).float().mean()) for k in ks}


@torch.inference_mode()
def retrieval_eval(
    encoder: Encoder,
    preprocess: Preprocess,
    shards: str,
    limit: int = 1000,
    batch_size: int = 256,
    caption_key: str = "txt",
    *,
    logit_scale: float,
) -> dict[str, Any]:
    image_feats, text_feats = [], []
    images: list[Any] = []
    captions: list[str] = []

    def flush() -> None:
        if images:
            image_feats.append(encoder.encode_images(preprocess(images)))
            text_feats.append(encoder.encode_texts(captions))
            images.clear()
            captions.clear()

    skipped: Counter = Counter()
    for image, caption, _ in iter_pairs(shards, caption_key=caption_key, limit=limit, stats=skipped):
        images.append(image)
        captions.append(caption)
        if len(images) == batch_size:
            flush()
    flush()
    if not image_feats:
        raise ValueError(
            f"no usable image-caption pairs in {shards} ({skip_reasons(skipped, none='it holds no samples')})"
        )
    img, txt = torch.cat(image_feats), torch.cat(text_feats)  # [N, D] each
    sim = img @ txt.T  # [N, N]
    i2t, t2i = recall_at(sim), recall_at(sim.T)
    out: dict[str, Any] = {"retrieval_pairs": int(img.shape[0])}
    out.update({f"image_to_text_R@{k}": v for k, v in i2t.items()})
    out.update({f"text_to_image_R@{k}": v for k, v in t2i.items()})
    diagnostics = coordination_diagnostics(img, txt, logit_scale)
    if "not_computable" in diagnostics:  # reported, not raised: the recalls above stand
        out["warnings"] = [f"diagnostics {diagnostics.pop('not_computable')}"]
    out.update({f"diag_{k}": v for k, v in diagnostics.items()})
    return out
