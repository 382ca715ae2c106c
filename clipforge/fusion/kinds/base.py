"""The base of every fusion kind: flat parameters and ONE forward written for torch and numpy alike.

Each kind writes its mathematics once, in `fuse(P, image_features, text_features, ops)`, with operators both
libraries share (`@`, `*`, `+`, indexing, `.reshape`, `.sum`); the few that differ (concatenate, sigmoid, relu)
come from `ops`. The torch module trains it; `Head` runs it in numpy from the same weights, and a test
checks the two agree.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


class TorchOps:
    @staticmethod
    def cat(xs: list[Any]) -> Any:
        return torch.cat(xs, dim=-1)

    sigmoid = staticmethod(torch.sigmoid)
    relu = staticmethod(torch.relu)


class NumpyOps:
    @staticmethod
    def cat(xs: list[Any]) -> Any:
        return np.concatenate(xs, axis=-1)

    @staticmethod
    def sigmoid(x: Any) -> Any:
        return np.exp(-np.logaddexp(0, -x)).astype(x.dtype)  # stable for large |x|

    @staticmethod
    def relu(x: Any) -> Any:
        return np.maximum(x, 0)


def refuse_widths(kind: str, one_width: bool, width: int, width_text: int) -> None:
    """Refuse projection widths a kind cannot take, in one line (`check_widths` in the registry names the kind)."""
    if width_text and not width:
        raise ValueError(
            "head.width_text sets the text side's projection width apart from the image side's: it needs "
            f"head.width > 0 as well (got width 0, width_text {width_text})"
        )
    if width_text and width_text != width and one_width:
        raise ValueError(
            f"{kind} fusion combines the two sides elementwise: give them one width "
            f"(head.width {width}, head.width_text {width_text})"
        )


def with_one(h: Any, ops: Any) -> Any:
    """[N, p] -> [N, p + 1]: the appended constant 1 keeps unimodal terms in an outer product."""
    return ops.cat([h, h[:, :1] * 0 + 1])


class Fusion(nn.Module):
    """z_i, z_t [N, D] (L2-normalised) -> logits [N, out]. Parameters are flat and named so `state_dict`
    keys are the names `fuse` reads. width 0 = no projection (h = z, p = D). post_hidden > 0: the structured
    kinds put a ReLU layer of that width between the fusion and the output (the "inference subnetwork" of
    the tensor- and low-rank-fusion papers); their fusion then produces `fused_out` = post_hidden values."""

    kind: ClassVar[str] = ""
    convex: ClassVar[bool] = False  # the loss is convex in the parameters: `fit` solves it with L-BFGS
    takes_post: ClassVar[bool] = True  # post_hidden applies (concat has its own hidden layer; late none)
    one_width: ClassVar[bool] = False  # the two sides are summed or multiplied elementwise: one width for both

    def __init__(
        self,
        dim: int,
        out: int,
        width: int = 16,
        width_text: int = 0,
        rank: int = 4,
        hidden: int = 64,
        post_hidden: int = 0,
    ):
        super().__init__()
        refuse_widths(self.kind, self.one_width, width, width_text)
        self.dim, self.out, self.rank, self.hidden = dim, out, rank, hidden
        self.post_hidden = post_hidden if self.takes_post else 0
        self.fused_out = self.post_hidden or out  # what the fusion stage produces
        self.width, self.width_text = width, width_text
        self.p_i = width or dim  # width of the image side after projection
        self.p_t = (width_text or width) or dim  # width of the text side
        if width:
            self.linear("proj_i", dim, self.p_i)
            self.linear("proj_t", dim, self.p_t)
        self.build()
        if self.post_hidden:
            self.linear("post", self.post_hidden, out)

    def build(self) -> None:  # each kind registers its own parameters
        raise NotImplementedError

    def config(self) -> dict[str, int]:
        """Everything `build_fusion` needs to rebuild this module (stored in head.json)."""
        return {
            "dim": self.dim,
            "out": self.out,
            "width": self.width,
            "width_text": self.width_text,
            "rank": self.rank,
            "hidden": self.hidden,
            "post_hidden": self.post_hidden,
        }

    def param(self, name: str, *shape: int, scale: float | None = None, value: float | None = None) -> None:
        t = torch.empty(*shape)
        if value is not None:
            t.fill_(value)
        else:
            nn.init.normal_(t, std=scale if scale is not None else 1 / math.sqrt(shape[0]))
        self.register_parameter(name, nn.Parameter(t))

    def linear(self, name: str, n_in: int, n_out: int) -> None:
        """Weight [n_in, n_out] (so `x @ W + b` reads the same in torch and numpy) and bias [n_out]."""
        self.param(f"{name}_w", n_in, n_out)
        self.param(f"{name}_b", n_out, value=0.0)

    @staticmethod
    def lin(P: dict[str, Any], name: str, x: Any) -> Any:
        return x @ P[f"{name}_w"] + P[f"{name}_b"]

    def project(self, P: dict[str, Any], zi: Any, zt: Any) -> tuple[Any, Any]:
        """[N, D] x2 -> h_i [N, p_i], h_t [N, p_t]: a linear projection to a small width (or none)."""
        if not self.width:
            return zi, zt
        return self.lin(P, "proj_i", zi), self.lin(P, "proj_t", zt)

    def fuse(self, P: dict[str, Any], zi: Any, zt: Any, ops: Any) -> Any:
        raise NotImplementedError

    def finish(self, P: dict[str, Any], fused: Any, ops: Any) -> Any:
        """[N, fused_out] -> logits [N, out]: the post-fusion ReLU layer's output layer, or nothing."""
        return self.lin(P, "post", ops.relu(fused)) if self.post_hidden else fused

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.fuse(dict(self.named_parameters()), image_features, text_features, TorchOps)

    def numpy_params(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().float().numpy().copy() for k, v in self.named_parameters()}

    def numpy_forward(self, P: dict[str, np.ndarray], zi: np.ndarray, zt: np.ndarray) -> np.ndarray:
        return self.fuse(P, zi, zt, NumpyOps)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
