"""`concat` (early fusion): an MLP on [h_i; h_t]. Its hidden ReLU layer CAN learn interactions, but only
by tiling them with hinges: the baseline every structured fusion has to beat at equal parameter count."""

from __future__ import annotations

from typing import Any

from clipforge.fusion.kinds.base import Fusion


class Concat(Fusion):
    kind = "concat"
    takes_post = False  # its hidden layer is `hidden`

    def build(self) -> None:
        self.linear("hid", self.p_i + self.p_t, self.hidden)
        self.linear("head", self.hidden, self.out)

    def fuse(self, P: dict[str, Any], zi: Any, zt: Any, ops: Any) -> Any:
        hi, ht = self.project(P, zi, zt)
        x = ops.relu(self.lin(P, "hid", ops.cat([hi, ht])))  # [N, hidden]
        return self.lin(P, "head", x)  # [N, out]
