"""Embedding for the index: batched float conversion + normalisation equals the bundle's own transform."""

import io
from collections import Counter

import numpy as np
import torch
from PIL import Image

from clipforge.encoders.bundle import load_bundle
from clipforge.encoders.pixels import split_transform
from clipforge.index.embed import Record, decode, embed_records


def _png(mode: str, size: tuple[int, int], colour) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_batched_normalisation_matches_the_bundle_transform(micro_bundle):
    bundle = load_bundle(micro_bundle)
    split = split_transform(bundle.transform)
    assert split is not None  # open_clip's eval transform ends with ToTensor + Normalize
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, format="JPEG")
    blobs = [
        buf.getvalue(),
        _png("RGB", (20, 16), (200, 30, 30)),
        _png("L", (9, 30), 77),
        _png("RGBA", (40, 40), (1, 2, 3, 4)),
    ]
    recs = [Record(f"k{i}", None, "src", data=b) for i, b in enumerate(blobs)]
    stats: Counter = Counter()
    batches = list(embed_records(bundle, iter(recs), batch_size=8, workers=1, stats=stats, progress=False))
    expected = torch.stack([bundle.transform(bundle.load_image(b)) for b in blobs])
    assert torch.equal(torch.from_numpy(batches[0].image_features), bundle.encode_images(expected))
    assert [it.width for it in batches[0].items] == [53, 20, 9, 40]
    u8 = decode(bundle, recs[0])
    assert isinstance(u8[0], np.ndarray) and u8[0].dtype == np.uint8  # the float tensor is made per batch


def test_a_transform_without_totensor_normalize_is_applied_per_image():
    assert split_transform(lambda im: im) is None


def test_a_sidecar_that_could_not_be_stored_is_dropped_not_fatal(micro_bundle, tmp_path):
    """NaN, 1e400, lone surrogates or 2**70 in an image's JSON: the image is indexed without that metadata,
    and the index's filtered searches keep working (they used to fail on json_extract)."""
    from clipforge.index import Index

    sidecars = [
        '{"x": NaN}',
        '{"x": 1e400}',
        '{"note": "a\\ud800b"}',
        '{"x": 1180591620717411303424}',
        '{"color": "red"}',
    ]
    folder = tmp_path / "data"
    folder.mkdir()
    for i, text in enumerate(sidecars):
        Image.new("RGB", (40, 30), (200, 10 * i, 10)).save(folder / f"img{i}.png")
        (folder / f"img{i}.json").write_text(text)
    bundle = load_bundle(micro_bundle)
    idx = Index.build(bundle, str(folder), tmp_path / "idx", progress=False)
    assert len(idx) == 5
    assert [idx.get(i).extra for i in range(5)] == [{}, {}, {}, {}, {"color": "red"}]
    assert [h.id for h in idx.search_text(bundle, "red", k=5, filters={"color": "red"})] == [4]
    assert idx.search_text(bundle, "red", k=5, filters={"x": 1}) == []
