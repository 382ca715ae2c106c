"""Zero-shot prompts: the one default template list, template checks, and the class-embedding ensemble.

Training's evaluation, `clipforge eval` and the service's /v1/classify all build class embeddings here, so a
bundle's zero-shot numbers in a run report are the ones the service gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the service's settings import this module: no torch at import time
    from clipforge.encoders.backends import Encoder

# An ensemble in the spirit of CLIP's zero-shot prompts: the mean of the normalised prompt embeddings is
# usually a better class embedding than any single prompt. The bare "{}" keeps a label that is already a
# phrase ("a red circle") working.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a drawing of a {}.",
    "{}",
)
SLOT = "{}"


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """The templates, or ValueError: each needs a `{}` for the class name (without one every class gets the
    same text, and `{0}`-style fields are not filled)."""
    if not templates:
        raise ValueError("at least one prompt template is needed")
    for t in templates:
        if not isinstance(t, str) or SLOT not in t:
            raise ValueError(f"prompt template {t!r} has no '{{}}' where the class name goes")
    return tuple(templates)


def fill(templates: Sequence[str], labels: Sequence[str]) -> list[str]:
    """Label-major prompts: [label0 x every template, label1 x every template, ...] (len L*T). Plain text
    replacement, not str.format: braces elsewhere in a template or a label stay as they are."""
    return [t.replace(SLOT, label) for label in labels for t in templates]


def ensemble(text_features: np.ndarray, n_labels: int) -> np.ndarray:
    """[L*T, D] label-major prompt features -> [L, D]: mean over templates, re-normalised."""
    feats = text_features.reshape(n_labels, -1, text_features.shape[-1]).mean(axis=1)  # [L, D]
    return feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)


def class_embeddings(encoder: Encoder, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """[L, D] class embeddings with an `Encoder` (synchronous; the service batches its own calls)."""
    templates = check_templates(templates)
    return ensemble(encoder.encode_texts(fill(templates, labels)).numpy(), len(labels))
