"""Caption text as every part stores and encodes it (shards for training, the index, items added over HTTP)."""

from __future__ import annotations

MAX_CAPTION_CHARS = 1000  # far above what a text tower's context holds; bounds what the index stores


def clean_caption(text: str | None, max_chars: int = MAX_CAPTION_CHARS) -> str | None:
    """Runs of whitespace (newlines, tabs) as one space, trimmed, cut at `max_chars`; None for no text."""
    if text is None:
        return None
    return " ".join(text.split())[:max_chars] or None


def one_line(message: object, limit: int = 200) -> str:
    """A (library's, multi-line) error message as one short line for a CLI error or a log record."""
    return " ".join(str(message).split())[:limit]
