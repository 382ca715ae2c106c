"""`additive`: w_i*h_i + w_t*h_t -> a linear head. The logit is f(z_i) + g(z_t) and nothing else, so it
cannot express "the image's colour AND shape match the question's" (an interaction): the control kind."""

from __future__ import annotations

from typing import Any

from clipforge.fusion.kinds.base import Fusion


class Additive(Fusion):
    kind = "additive"
    one_width = True
    takes_post = False  # a ReLU on f(z_i) + g(z_t) would be an interaction (a hinge of a sum): no longer the control

    def build(self) -> None:
        self.param("w_i", self.p_i, value=1.0)
        self.param("w_t", self.p_t, value=1.0)
        self.linear("head", self.p_i, self.out)

    def fuse(self, P: dict[str, Any], zi: Any, zt: Any, ops: Any) -> Any:
        hi, ht = self.project(P, zi, zt)
        return self.lin(P, "head", P["w_i"] * hi + P["w_t"] * ht)  # [N, out]: no product of the two sides
