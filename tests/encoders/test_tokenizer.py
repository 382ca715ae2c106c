import string

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.tokenizer import SimpleTokenizer

from clipforge.encoders.tokenizer import ClipBpe, Tokenizer

REF, FAST = SimpleTokenizer(), ClipBpe()

AWKWARD = [
    "",
    "   ",
    "a red circle",
    "A  Red\tCIRCLE\r\non blue",
    "Tom &amp; Jerry",
    "fish &amp;amp; chips",
    "a < b & c",
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e",
    "Ã©tÃ© mojibake",
    "\u201ccurly quotes\u201d and \u2018these\u2019",
    "non\u00a0breaking",
    "\x1b[31mterminal\x1b[0m",
    "ctrl\x00chars\x07here\x0b\x0c",
    "ﬁne ligature",
    "ｆｕｌｌ width",
    "東京タワー の 写真",
    "emoji 🐱🚀 cat",
    "it's they're I'm we'll you'd",
    "1234567890 3.14 -5",
    "word " * 100,  # longer than the context: truncated, EOT last
    "<start_of_text> literal specials <end_of_text>",
]


def test_same_ids_as_open_clip_on_awkward_text():
    assert torch.equal(FAST(AWKWARD), REF(AWKWARD))
    assert FAST(["word " * 100])[0, -1] == REF.eot_token_id
    assert torch.equal(FAST("one string"), REF("one string"))
    assert torch.equal(FAST(AWKWARD, context_length=16), REF(AWKWARD, context_length=16))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=120), min_size=1, max_size=4))
def test_same_ids_as_open_clip_on_any_unicode(texts):
    assert torch.equal(FAST(texts), REF(texts))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=string.printable, max_size=200), min_size=1, max_size=4))
def test_same_ids_as_open_clip_on_ascii_including_the_fast_path(texts):
    assert torch.equal(FAST(texts), REF(texts))


def test_tokenizer_wrapper_uses_the_context_length():
    tok = Tokenizer("clip-bpe", context_length=12)
    out = tok(["a red circle", "word " * 50])
    assert out.shape == (2, 12) and out.dtype == torch.long
    assert torch.equal(out, REF(["a red circle", "word " * 50], context_length=12))
