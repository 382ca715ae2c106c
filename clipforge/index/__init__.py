"""Embed shards or folders with a model bundle into FAISS (images and captions) + SQLite metadata.

from clipforge.index import Index
idx = Index.build(bundle, "data/synth/val/shard-{000000..000000}.tar", "runs/index")
hits = Index.open("runs/index", bundle=bundle).search_text(bundle, "a red circle", k=5)
"""

from clipforge.index.core import Index
from clipforge.index.types import (
    Hit,
    IndexInputError,
    IndexMismatchError,
    IndexUnreadableError,
    Item,
    UnknownIdError,
)

__all__ = ["Hit", "Index", "IndexInputError", "IndexMismatchError", "IndexUnreadableError", "Item", "UnknownIdError"]
