from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def questions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small question set (40 + 16 images, six questions each) from the synth's question writer."""
    from clipforge.training.synth import write_questions

    out = tmp_path_factory.mktemp("questions")
    write_questions(out, train=40, test=16, seed=3)
    return out
