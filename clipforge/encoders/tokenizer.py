"""Tokenizer: open_clip's CLIP BPE (shipped with open_clip, works offline) or a Hugging Face tokenizer.

The CLIP BPE runs in every data worker for every caption, so `ClipBpe` gives the exact ids of open_clip's
`SimpleTokenizer` with less work: text that is plain printable ASCII without '&' skips ftfy and HTML
unescaping (both are the identity on it), each word's ids are cached (open_clip caches only the BPE
string), and the batch is filled in NumPy. `tests/encoders/test_tokenizer.py` checks equality with open_clip.
"""

from __future__ import annotations

import numpy as np
import torch
from open_clip.tokenizer import SimpleTokenizer, _clean_lower

_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7F) if chr(c) != "&") | {"\t", "\n", "\r"}
_WORD_CACHE_MAX = 1_000_000


class ClipBpe(SimpleTokenizer):
    """open_clip's SimpleTokenizer (clean='lower', truncation), same ids, cheaper per caption."""

    def __init__(self, context_length: int = 77) -> None:
        super().__init__(context_length=context_length)
        self._word_ids: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        # ftfy.fix_text and html.unescape leave plain text unchanged: only whitespace and case remain
        text = " ".join(text.split()).lower() if _PLAIN.issuperset(text) else _clean_lower(text)
        ids: list[int] = []
        cache, byte_encoder, encoder = self._word_ids, self.byte_encoder, self.encoder
        for word in self.pat.findall(text):
            got = cache.get(word)
            if got is None:
                token = "".join(byte_encoder[b] for b in word.encode("utf-8"))
                got = [encoder[t] for t in self.bpe(token).split(" ")]
                if len(cache) < _WORD_CACHE_MAX:
                    cache[word] = got
            ids.extend(got)
        return ids

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = np.zeros((len(texts), n), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text)][: n - 1]
            ids.append(self.eot_token_id)
            out[i, : len(ids)] = ids
        return torch.from_numpy(out)


class Tokenizer:
    """Callable list[str] -> LongTensor [N, context_length]."""

    def __init__(self, name: str = "clip-bpe", context_length: int = 77) -> None:
        self.name = name
        self.context_length = context_length
        if name == "clip-bpe":
            self._tok = ClipBpe(context_length=context_length)
        else:  # a Hugging Face tokenizer name or local directory
            from open_clip.tokenizer import HFTokenizer

            self._tok = HFTokenizer(name, context_length=context_length)

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._tok(list(texts), context_length=self.context_length)
