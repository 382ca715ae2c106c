"""The registry of fusion kinds: name -> module class; each kind lives in its own small module."""

from __future__ import annotations

from typing import Any

from clipforge.fusion.kinds.additive import Additive
from clipforge.fusion.kinds.base import Fusion, NumpyOps, TorchOps, refuse_widths
from clipforge.fusion.kinds.concat import Concat
from clipforge.fusion.kinds.gated import Gated
from clipforge.fusion.kinds.late import Late
from clipforge.fusion.kinds.lowrank import LowRank
from clipforge.fusion.kinds.multiplicative import Multiplicative
from clipforge.fusion.kinds.tensor import Tensor

KINDS: dict[str, type[Fusion]] = {k.kind: k for k in (Late, Concat, Additive, Multiplicative, Tensor, LowRank, Gated)}
INTERACTION_KINDS = ("concat", "multiplicative", "tensor", "lowrank", "gated")  # all but late and additive
STRUCTURED_KINDS = tuple(k for k in INTERACTION_KINDS if k != "concat")  # an explicit interaction term, not an MLP


def check_widths(kind: str, width: int, width_text: int) -> None:
    """Refuse projection widths `kind` cannot take (before any data is read, where the caller can)."""
    refuse_widths(kind, kind in KINDS and KINDS[kind].one_width, width, width_text)


def build_fusion(kind: str, dim: int, out: int, **kw: Any) -> Fusion:
    """A fresh fusion module of `kind`; `kw`: width, width_text, rank, hidden (see `Fusion`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown fusion kind {kind!r} (known: {', '.join(KINDS)})")
    return KINDS[kind](dim, out, **kw)


__all__ = [
    "INTERACTION_KINDS",
    "KINDS",
    "STRUCTURED_KINDS",
    "Fusion",
    "NumpyOps",
    "TorchOps",
    "build_fusion",
    "check_widths",
]
