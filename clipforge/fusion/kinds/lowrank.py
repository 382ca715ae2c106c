"""`lowrank`: low-rank multimodal fusion (Liu et al. 2018). The tensor layer's weight, one
(p_i+1) x (p_t+1) matrix per output, is written as a sum of r rank-1 terms: for output k,
    logit_k = sum_r lam_r * (a_rk . [h_i; 1]) * (b_rk . [h_t; 1]) + bias_k,
so the outer product is never materialised: O(r (p_i + p_t) out) instead of O(p_i p_t out). With
r >= min(p_i, p_t) + 1 it spans exactly the tensor layer's functions."""

from __future__ import annotations

from typing import Any

from clipforge.fusion.kinds.base import Fusion, with_one


class LowRank(Fusion):
    kind = "lowrank"

    def build(self) -> None:
        r, out = self.rank, self.fused_out
        if r < 1:
            raise ValueError(f"lowrank fusion needs rank >= 1, got {r}")
        # factors stored [p + 1, r * out] so one matmul per modality gives every rank's projection
        self.param("factor_i", self.p_i + 1, r * out, scale=(self.p_i + 1) ** -0.5)
        self.param("factor_t", self.p_t + 1, r * out, scale=(self.p_t + 1) ** -0.5)
        self.param("lam", r, value=1.0 / r)
        self.param("bias", out, value=0.0)

    def fuse(self, P: dict[str, Any], zi: Any, zt: Any, ops: Any) -> Any:
        hi, ht = self.project(P, zi, zt)
        n, r = zi.shape[0], self.rank
        fi = (with_one(hi, ops) @ P["factor_i"]).reshape(n, r, self.fused_out)  # [N, r, out]
        ft = (with_one(ht, ops) @ P["factor_t"]).reshape(n, r, self.fused_out)  # [N, r, out]
        return self.finish(P, (fi * ft * P["lam"][:, None]).sum(1) + P["bias"], ops)  # [N, out]
