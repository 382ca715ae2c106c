"""`tensor`: tensor fusion (Zadeh et al. 2017). The outer product of [h_i; 1] and [h_t; 1] has
(p_i + 1)(p_t + 1) terms: a constant, every unimodal term (h_i and h_t, thanks to the appended 1) and every
bimodal product h_i[a] * h_t[b]; a linear layer on it is a full bilinear form plus the linear terms."""

from __future__ import annotations

from typing import Any

from clipforge.fusion.kinds.base import Fusion, with_one


class Tensor(Fusion):
    kind = "tensor"

    def build(self) -> None:
        self.linear("head", (self.p_i + 1) * (self.p_t + 1), self.fused_out)

    def fuse(self, P: dict[str, Any], zi: Any, zt: Any, ops: Any) -> Any:
        hi, ht = self.project(P, zi, zt)
        hi1, ht1 = with_one(hi, ops), with_one(ht, ops)  # [N, p_i + 1], [N, p_t + 1]
        outer = (hi1[:, :, None] * ht1[:, None, :]).reshape(hi1.shape[0], -1)  # [N, (p_i+1)(p_t+1)]
        return self.finish(P, self.lin(P, "head", outer), ops)  # [N, out]
