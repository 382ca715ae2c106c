import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipforge.index import Hit, Index, IndexInputError
from clipforge.training.synth import COLORS

CHANCE = 1 / len(COLORS)


@pytest.fixture(scope="module")
def idx(built_index: Path) -> Index:
    return Index.open(built_index)


def colour_precision(hits: list[Hit], colour: str) -> float:
    return sum(h.metadata["color"] == colour for h in hits) / len(hits)


def test_text_to_image_finds_the_named_colour_well_above_chance(idx, trained_bundle):
    precisions = [colour_precision(idx.search_text(trained_bundle, f"a {c} square", k=10), c) for c in COLORS]
    assert np.mean(precisions) >= 3 * CHANCE, precisions  # chance is 1/6
    hits = idx.search_text(trained_bundle, "a red square", k=10)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(isinstance(h.id, int) and h.caption and h.metadata["member"].endswith(".jpg") for h in hits)


def test_image_to_image_and_image_to_text(idx, trained_bundle, synth_data):
    precisions, text_precisions = [], []
    for colour in COLORS:
        folder = Path(synth_data["zeroshot"]) / f"{colour}_square"
        image = Image.open(next(folder.glob("*.jpg"))).convert("RGB")
        precisions.append(colour_precision(idx.search_image(trained_bundle, image, k=10), colour))
        captions = idx.search_image(trained_bundle, image, k=10, target="captions")
        text_precisions.append(sum(colour in h.caption for h in captions) / len(captions))
    assert np.mean(precisions) >= 3 * CHANCE, precisions
    assert np.mean(text_precisions) >= 3 * CHANCE, text_precisions


def test_search_by_stored_id_excludes_the_item(idx):
    item = idx.get(7)
    hits = idx.search_id(7, k=10)
    assert len(hits) == 10 and 7 not in [h.id for h in hits]
    assert colour_precision(hits, item.extra["color"]) >= 0.5


def test_search_vectors_with_constructed_queries(idx):
    st = idx._current()
    stored = np.stack([st.images.reconstruct(i) for i in (3, 30, 300)])  # [3, D]
    results = idx.search_vectors(stored, k=1)
    assert [r[0].id for r in results] == [3, 30, 300]
    assert all(abs(r[0].score - 1.0) < 1e-4 for r in results)
    unnormalised = idx.search_vectors(stored[:1] * 7.0, k=1)  # queries are normalised
    assert unnormalised[0][0].id == 3 and abs(unnormalised[0][0].score - 1.0) < 1e-4


def test_filters_threshold_offset(idx, trained_bundle):
    hits = idx.search_text(trained_bundle, "a square", k=20, filters={"color": "blue", "size": ["small", "large"]})
    assert len(hits) == 20 and all(h.metadata["color"] == "blue" for h in hits)
    by_source = idx.search_text(trained_bundle, "a square", k=5, filters={"source": hits[0].metadata["source"]})
    assert all(h.metadata["source"] == hits[0].metadata["source"] for h in by_source)
    assert idx.search_text(trained_bundle, "a square", k=5, filters={"color": "no-such-colour"}) == []
    everything = idx.search_text(trained_bundle, "a square", k=60)
    page2 = idx.search_text(trained_bundle, "a square", k=20, offset=20)
    assert [h.id for h in page2] == [h.id for h in everything[20:40]]
    cut = everything[9].score
    above = idx.search_text(trained_bundle, "a square", k=60, threshold=cut)
    assert len(above) >= 10 and all(h.score >= cut for h in above) and len(above) < 60


def test_large_k_returns_everything_and_caps(idx):
    q = np.random.default_rng(0).standard_normal((2, idx.dim)).astype(np.float32)
    results = idx.search_vectors(q, k=1000)
    assert [len(r) for r in results] == [600, 600]
    assert len(idx.search_vectors(q, k=10, offset=595)[0]) == 5
    for bad in (0, -3, 1001, 2.5, True):
        with pytest.raises(IndexInputError, match="k"):
            idx.search_vectors(q, k=bad)
    with pytest.raises(IndexInputError, match="offset"):
        idx.search_vectors(q, k=10, offset=-1)


def test_bad_queries_are_clear_errors(idx):
    with pytest.raises(IndexInputError, match="dimension 5, the index has 32"):
        idx.search_vectors(np.ones((1, 5), np.float32))
    with pytest.raises(IndexInputError, match="NaN"):
        idx.search_vectors(np.full((1, idx.dim), np.nan, np.float32))
    with pytest.raises(IndexInputError, match="zeros"):
        idx.search_vectors(np.zeros((1, idx.dim), np.float32))
    with pytest.raises(IndexInputError, match="target"):
        idx.search_vectors(np.ones((1, idx.dim), np.float32), target="audio")
    with pytest.raises(IndexInputError, match="unknown id 99999"):
        idx.get(99999)
    with pytest.raises(IndexInputError, match="unknown id"):
        idx.search_id(99999)
    with pytest.raises(IndexInputError, match="filter key"):
        idx.search_vectors(np.ones((1, idx.dim), np.float32), filters={'a" OR 1=1 --': 1})
    # a key is a bound parameter, never SQL: an injection attempt is a field no item has
    assert idx.search_vectors(np.ones((1, idx.dim), np.float32), filters={"a') OR 1=1 --": 1}) == [[]]


def test_collapse_drops_near_duplicates(index_copy, trained_bundle):
    idx = Index.open(index_copy, bundle=trained_bundle)
    data, _ = idx.read_image_bytes(11)
    im = Image.open(io.BytesIO(data))
    copies = []
    for q in (95, 90, 85):  # the same picture re-encoded: near-duplicates
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=q)
        copies.append((buf.getvalue(), "a copy", {"copy": q}))
    ids = idx.add(trained_bundle, copies)
    plain = [h.id for h in idx.search_id(11, k=10)]
    assert set(ids) <= set(plain[:3])
    collapsed = idx.search_id(11, k=10, collapse=0.98)
    assert len(collapsed) == 10 and sum(h.id in ids for h in collapsed) == 1


def test_read_image_bytes_from_the_recorded_member(idx):
    data, mime = idx.read_image_bytes(42)
    assert mime == "image/jpeg"
    item = idx.get(42)
    assert Image.open(io.BytesIO(data)).size == (item.width, item.height)
    with pytest.raises(IndexInputError):
        idx.read_image_bytes(123456)
