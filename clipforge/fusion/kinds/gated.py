"""`gated`: each modality gates the other. g_i = sigmoid(h_t W + c) decides how much of the image side
passes, g_t = sigmoid(h_i V + d) the text side; the gated sides are then concatenated into a linear head.
With gates pinned to 1/0 it is exactly a unimodal linear head (tests check this): the gates ARE the
interaction."""

from __future__ import annotations

from typing import Any

from clipforge.fusion.kinds.base import Fusion


class Gated(Fusion):
    kind = "gated"

    def build(self) -> None:
        self.linear("gate_i", self.p_t, self.p_i)  # text -> gate on the image side
        self.linear("gate_t", self.p_i, self.p_t)  # image -> gate on the text side
        self.linear("head", self.p_i + self.p_t, self.fused_out)

    def fuse(self, P: dict[str, Any], zi: Any, zt: Any, ops: Any) -> Any:
        hi, ht = self.project(P, zi, zt)
        gi = ops.sigmoid(self.lin(P, "gate_i", ht))  # [N, p_i], in (0, 1)
        gt = ops.sigmoid(self.lin(P, "gate_t", hi))  # [N, p_t]
        return self.finish(P, self.lin(P, "head", ops.cat([gi * hi, gt * ht])), ops)  # [N, out]
