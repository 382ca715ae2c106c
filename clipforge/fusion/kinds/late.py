"""`late`: the zero-shot baseline. The encoders already put matching images and texts close; the only
learned thing is a calibrated logistic on their cosine similarity (Platt scaling): 2 numbers per output."""

from __future__ import annotations

from typing import Any

from clipforge.fusion.kinds.base import Fusion


class Late(Fusion):
    kind = "late"
    takes_post = False
    convex = True  # a 2-parameter logistic: fitted to its optimum by full-batch L-BFGS, not SGD epochs

    def __init__(self, dim: int, out: int, **kw: Any):
        kw["width"] = kw["width_text"] = 0  # no projection: the cosine of the frozen embeddings is the feature
        super().__init__(dim, out, **kw)

    def build(self) -> None:
        self.param("scale", self.out, value=10.0)  # ~ a CLIP logit scale, so training starts sensible
        self.param("bias", self.out, value=0.0)

    def fuse(self, P: dict[str, Any], zi: Any, zt: Any, ops: Any) -> Any:
        cosine = (zi * zt).sum(-1)[:, None]  # [N, 1]: both are L2-normalised
        return cosine * P["scale"] + P["bias"]  # [N, out]
