"""Tokenizer: open_clip's CLIP BPE (shipped with open_clip, works offline) or a Hugging Face tokenizer."""

from __future__ import annotations

import torch


class Tokenizer:
    """Callable list[str] -> LongTensor [N, context_length]."""

    def __init__(self, name: str = "clip-bpe", context_length: int = 77) -> None:
        self.name = name
        self.context_length = context_length
        if name == "clip-bpe":
            from open_clip.tokenizer import SimpleTokenizer

            self._tok = SimpleTokenizer(context_length=context_length)
        else:  # a Hugging Face tokenizer name or local directory
            from open_clip.tokenizer import HFTokenizer

            self._tok = HFTokenizer(name, context_length=context_length)

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._tok(list(texts), context_length=self.context_length)
