"""`multiplicative`: the additive terms plus h_i * h_t (elementwise). With the projections, the product
terms make a rank-p bilinear form z_i^T A diag(w) B^T z_t: a learned metric between the two sides."""

from __future__ import annotations

from typing import Any

from clipforge.fusion.kinds.base import Fusion


class Multiplicative(Fusion):
    kind = "multiplicative"
    one_width = True

    def build(self) -> None:
        self.linear("head", 3 * self.p_i, self.fused_out)

    def fuse(self, P: dict[str, Any], zi: Any, zt: Any, ops: Any) -> Any:
        hi, ht = self.project(P, zi, zt)
        return self.finish(P, self.lin(P, "head", ops.cat([hi, ht, hi * ht])), ops)  # [N, 3p] -> [N, out]
