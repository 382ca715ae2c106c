"""Fusion heads: small models on a frozen bundle's image and text embeddings that answer questions needing
both at once ("is there a red circle?" about this image). `head.load_head` is what the service uses."""

from clipforge.fusion.head import Head, HeadError, load_head, save_head
from clipforge.fusion.kinds import KINDS, build_fusion

__all__ = ["KINDS", "Head", "HeadError", "build_fusion", "load_head", "save_head"]
