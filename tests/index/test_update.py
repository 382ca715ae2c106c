import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

from clipforge.index import Index, IndexInputError, IndexMismatchError, UnknownIdError, versions


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_add_remove_reopen_round_trip(index_copy, trained_bundle):
    idx = Index.open(index_copy, bundle=trained_bundle)
    ids = idx.add(
        trained_bundle,
        [(png_bytes((220, 40, 40)), "a plain red picture", {"tag": "new"}), (png_bytes((40, 80, 220)), None, {})],
    )
    assert ids == [600, 601] and len(idx) == 602
    item = idx.get(600)
    assert (item.caption, item.width, item.height, item.extra) == ("a plain red picture", 40, 30, {"tag": "new"})
    data, mime = idx.read_image_bytes(600)
    assert mime == "image/png" and data == png_bytes((220, 40, 40))
    assert idx.search_vectors(idx._current().images.reconstruct(601)[None], k=1)[0][0].id == 601
    assert [h.id for h in idx.search_text(trained_bundle, "red", k=5, filters={"tag": "new"}, target="captions")] == [
        600
    ]

    reopened = Index.open(index_copy, bundle=trained_bundle)
    assert len(reopened) == 602 and reopened.get(601).caption is None
    assert reopened.info()["live"] == {"items": 602, "images": 602, "captions": 601}

    assert reopened.remove([600, 5]) == 2
    assert len(reopened) == 600 and reopened.info()["live"]["images"] == 600
    with pytest.raises(IndexInputError, match="unknown id 5"):
        reopened.get(5)
    q = np.random.default_rng(1).standard_normal((3, reopened.dim))
    assert not {5, 600} & {h.id for row in reopened.search_vectors(q, k=600) for h in row}
    assert len(idx) == 600  # the first handle noticed the new version (pointer changed)
    assert Index.open(index_copy).manifest["next_id"] == 602  # ids are never reused
    assert Index.open(index_copy).add(trained_bundle, [(png_bytes((0, 0, 0)), "x", {})]) == [602]


def test_bad_updates_change_nothing(index_copy, trained_bundle):
    idx = Index.open(index_copy, bundle=trained_bundle)
    before = idx.manifest["version"]
    with pytest.raises(IndexInputError, match="unknown id"):
        idx.remove([3, 10_000])
    with pytest.raises(IndexInputError, match="item 1"):
        idx.add(trained_bundle, [(png_bytes((1, 2, 3)), "ok", {}), (b"not an image at all", "bad", {})])
    with pytest.raises(IndexInputError, match="nothing to add"):
        idx.add(trained_bundle, [])
    assert idx.manifest["version"] == before and len(idx) == 600 and idx.get(3).id == 3


def test_an_id_removed_meanwhile_is_an_unknown_id_error(index_copy, trained_bundle):
    """Two writers remove one item: the second meets an unknown id, an error of its own (a LookupError: the
    service answers it with 404, not with the 422 of a bad request), and removes nothing."""
    first, second = Index.open(index_copy, bundle=trained_bundle), Index.open(index_copy, bundle=trained_bundle)
    assert second.get(5).id == 5  # both have seen it
    assert first.remove([5]) == 1
    with pytest.raises(UnknownIdError, match=r"unknown id\(s\) \[5\]; nothing was removed") as caught:
        second.remove([5, 6])
    assert isinstance(caught.value, LookupError) and isinstance(caught.value, IndexInputError)
    assert len(second) == 599 and second.get(6).id == 6
    with pytest.raises(UnknownIdError):
        second.get(5)


def test_add_vectors_stores_what_it_is_given_and_add_is_its_wrapper(index_copy, trained_bundle):
    """`add` = decode + encode with the bundle + `add_vectors`; vectors made elsewhere (the service's batcher)
    go straight to `add_vectors`, which checks their shape, values and model before anything is written."""
    idx = Index.open(index_copy, bundle=trained_bundle)
    red, blue = png_bytes((220, 40, 40)), png_bytes((40, 80, 220))
    image_features = trained_bundle.encode_images(
        trained_bundle.preprocess([trained_bundle.load_image(b) for b in (red, blue)])
    ).numpy()
    caption_features = trained_bundle.encode_texts(["a red one"]).numpy()
    items = [(red, " a  red one ", {"via": "vectors"}), (blue, None, {})]
    for bad, match in (
        ((image_features[:1], caption_features), r"image features have shape \[1, 32\], expected \[2, 32\]"),
        ((image_features, np.zeros((0, 32))), r"caption features have shape \[0, 32\], expected \[1, 32\]"),
        ((image_features * np.nan, caption_features), "NaN"),
    ):
        with pytest.raises(IndexInputError, match=match):
            idx.add_vectors(items, *bad)
    with pytest.raises(IndexMismatchError, match="vectors come from bundle"):
        idx.add_vectors(items, image_features, caption_features, fingerprint="0" * 64)
    with pytest.raises(IndexInputError, match="item 1: not a readable image"):
        idx.add_vectors([items[0], (b"junk", None, {})], image_features, caption_features)
    assert idx.manifest["version"] == 1 and not (index_copy / "images").exists()  # nothing was written

    ids = idx.add_vectors(items, image_features, caption_features, fingerprint=trained_bundle.fingerprint)
    assert (
        ids == [600, 601]
        and idx.get(600).caption == "a red one"
        and (idx.get(601).width, idx.get(601).height) == (40, 30)
    )
    np.testing.assert_allclose(idx._current().images.reconstruct(601), image_features[1], atol=1e-6)
    assert idx.add(trained_bundle, [(blue, "a blue one", {})]) == [602]
    # the same image through `add` (a batch of one here, of two above: the encoder's numerics differ slightly)
    assert float(idx._current().images.reconstruct(602) @ image_features[1]) > 0.999


@pytest.mark.parametrize("crash_at", ["pointer", "faiss_write"])
def test_crash_during_update_leaves_previous_version(index_copy, trained_bundle, monkeypatch, crash_at):
    idx = Index.open(index_copy, bundle=trained_bundle)
    version = idx.manifest["version"]

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    if crash_at == "pointer":  # the new version directory is complete; the pointer swap never happens
        monkeypatch.setattr(versions, "commit_pointer", crash)
    else:  # dies half-way through writing the FAISS files of the new version
        monkeypatch.setattr("clipforge.index.update.faiss.write_index", crash)
    with pytest.raises(OSError, match="simulated crash"):
        idx.add(trained_bundle, [(png_bytes((9, 9, 9)), "lost", {})])
    with pytest.raises(OSError, match="simulated crash"):
        idx.remove([1, 2])
    monkeypatch.undo()

    fresh = Index.open(index_copy, bundle=trained_bundle)
    assert fresh.manifest["version"] == version and len(fresh) == 600
    assert fresh.get(1).id == 1 and len(fresh.search_id(2, k=5)) == 5
    assert fresh.add(trained_bundle, [(png_bytes((9, 9, 9)), "kept", {})]) == [600]  # writers recover
    assert not list(index_copy.glob(".tmp-*"))


def test_searches_keep_working_during_adds(index_copy, trained_bundle):
    idx = Index.open(index_copy, bundle=trained_bundle)
    reader = Index.open(index_copy)  # a second handle, as another process would have
    q = np.random.default_rng(2).standard_normal((4, idx.dim)).astype(np.float32)
    errors, sizes, stop = [], [], threading.Event()

    def search_loop() -> None:
        while not stop.is_set():
            try:
                rows = reader.search_vectors(q, k=1000)
                sizes.append(len(rows[0]))
                assert all(len(r) == len(rows[0]) for r in rows)
            except Exception as exn:  # pragma: no cover - reported below
                errors.append(exn)

    t = threading.Thread(target=search_loop)
    t.start()
    try:
        for n in range(3):
            idx.add(trained_bundle, [(png_bytes((n * 50, 10, 10)), f"new {n}", {})])
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert set(sizes) <= {600, 601, 602, 603} and len(reader) == 603
    assert len(list(index_copy.glob("v[0-9]*"))) <= versions.KEEP_VERSIONS  # old versions are swept


def test_remove_with_an_index_type_that_cannot_remove(trained_bundle, synth_data, tmp_path):
    idx = Index.build(trained_bundle, synth_data["val"], tmp_path / "hnsw", factory="HNSW8", progress=False)
    assert idx.remove([0, 1]) == 2
    assert idx.manifest["images"]["tombstones"] == 2  # HNSW keeps the vectors; results skip them
    removed = idx._current().images.reconstruct(0)[None]  # still inside the HNSW graph
    hits = idx.search_vectors(removed, k=10)[0]
    assert len(hits) == 10 and not {0, 1} & {h.id for h in hits} and hits[0].score < 0.9999


def test_counts_after_removes_and_adds_on_an_index_that_cannot_remove(trained_bundle, synth_data, tmp_path):
    """HNSW keeps removed vectors (tombstones): an add after removes set the manifest's counts to the FAISS
    indexes' sizes, so removed items were counted again."""
    idx = Index.build(trained_bundle, synth_data["val"], tmp_path / "hnsw", factory="HNSW8", progress=False)
    before = dict(idx.manifest["counts"])
    captioned = sum(idx.get(i).caption is not None for i in (0, 1, 2))
    assert idx.remove([0, 1, 2]) == 3
    idx.add(trained_bundle, [(png_bytes((220, 40, 40)), "a red one", {}), (png_bytes((40, 80, 220)), "blue", {})])
    manifest = idx.manifest
    counts = manifest["counts"]
    assert counts["items"] == counts["images"] == before["items"] - 3 + 2 == len(idx)
    assert counts["captions"] == before["captions"] - captioned + 2
    assert manifest["images"]["tombstones"] == 3 and idx._current().images.ntotal == before["images"] + 2
    assert (manifest["images"]["count"], manifest["captions"]["count"]) == (counts["images"], counts["captions"])
    live = idx.info()["live"]  # what /v1/info shows beside the counts: the same live numbers
    assert (live["items"], live["images"], live["captions"]) == (counts["items"], counts["images"], counts["captions"])


def test_an_index_rebuilt_with_another_bundle_is_not_switched_to(
    trained_bundle, micro_bundle, built_index, synth_data, tmp_path, caplog
):
    """An index opened with a bundle follows new versions of its directory, but not an index rebuilt there with
    another bundle (its vectors mean nothing to this model): searches keep the version loaded, a warning is
    logged, updates are refused and leave the new index alone; a matching index put back is followed again."""
    import shutil

    from clipforge.encoders.bundle import load_bundle

    root = tmp_path / "idx"
    Index.build(trained_bundle, synth_data["val"], root, progress=False).close()
    idx = Index.open(root, bundle=trained_bundle)
    q = trained_bundle.encode_texts(["a red circle"]).numpy()
    before = [(h.id, h.score) for h in idx.search_vectors(q, k=5)[0]]

    other = load_bundle(micro_bundle, device="cpu")  # the same architecture, another seed, untrained
    shutil.rmtree(root)
    Index.build(other, synth_data["val"], root, progress=False).close()
    rebuilt = versions.read_manifest(root)
    assert rebuilt["fingerprint"] == other.fingerprint != trained_bundle.fingerprint
    with caplog.at_level("WARNING", logger="clipforge.index"):
        assert [(h.id, h.score) for h in idx.search_vectors(q, k=5)[0]] == before
        assert idx.fingerprint == trained_bundle.fingerprint and len(idx) == 100
    assert caplog.text.count("replaced by one of another bundle") == 1  # once, not on every call
    with pytest.raises(IndexMismatchError, match="another bundle"):
        idx.remove([0])
    with pytest.raises(IndexMismatchError, match="another bundle"):
        idx.add(trained_bundle, [(png_bytes((1, 2, 3)), "x", {})])
    assert versions.read_manifest(root) == rebuilt  # nothing was written over it

    shutil.rmtree(root)
    shutil.copytree(built_index, root)  # an index of the bundle it was opened with: followed again
    assert len(idx) == 600 and idx.remove([0]) == 1


def test_memory_mapped_index_searches_and_updates(trained_bundle, synth_data, tmp_path):
    """open(mmap=True): the inverted lists stay in the file (paged in by the OS), results equal the in-RAM
    index's, and adds/removes through the mapped handle work on an in-RAM copy of the file."""
    import faiss

    from clipforge.index import faiss_index

    root = tmp_path / "ivf"
    Index.build(trained_bundle, synth_data["train"], root, factory="IVF4,Flat", progress=False).close()
    ram, mapped = Index.open(root, bundle=trained_bundle), Index.open(root, bundle=trained_bundle, mmap=True)

    def lists_type(index: Index) -> type:  # the state (and its lists) is only borrowed here
        state = index._current()
        return type(faiss.downcast_InvertedLists(faiss.extract_index_ivf(state.images).invlists))

    mapped_type = lists_type(mapped)
    assert mapped_type.__name__ != "ArrayInvertedLists" and lists_type(ram).__name__ == "ArrayInvertedLists"
    q = np.random.default_rng(0).standard_normal((4, mapped.dim)).astype(np.float32)
    assert [[h.id for h in r] for r in mapped.search_vectors(q, k=20)] == [
        [h.id for h in r] for r in ram.search_vectors(q, k=20)
    ]
    assert [h.id for h in mapped.search_id(3, k=5)] == [h.id for h in ram.search_id(3, k=5)]

    new = mapped.add(trained_bundle, [(png_bytes((10, 200, 10)), "a green one", {})])
    assert mapped.remove([3]) == 1 and len(mapped) == 600
    v = faiss_index.reconstruct(mapped._current().images, new)
    assert mapped.search_vectors(v, k=1)[0][0].id == new[0]
    assert lists_type(mapped) is mapped_type  # the new version is mapped too
    assert 3 not in {h.id for h in ram.search_vectors(q, k=600)[0]} and len(ram) == 600  # the other handle followed


@pytest.mark.parametrize(
    "extra, caption, match",
    [
        ({"x": float("nan")}, None, "finite"),
        ({"x": [1, {"y": float("inf")}]}, None, "finite"),
        ({"x": 2**70}, None, "64 bits"),
        ({"x": "a\ud800"}, None, "surrogate"),
        ({"a\udfff": 1}, None, "keys"),
        ({}, "a\ud800 caption", "surrogate"),
        ({"x": "a" * 20_000}, None, "allowed"),
    ],
    ids=["nan", "nested-inf", "int70", "surrogate-value", "surrogate-key", "surrogate-caption", "too-big"],
)
def test_add_refuses_what_could_be_stored_but_not_read_back(index_copy, trained_bundle, extra, caption, match):
    idx = Index.open(index_copy, bundle=trained_bundle)
    version = idx.info()["version"]
    with pytest.raises(IndexInputError, match=match):
        idx.add(trained_bundle, [(png_bytes((1, 2, 3)), caption, extra)])
    assert len(idx) == 600 and idx.info()["version"] == version  # nothing written
    assert idx.search_text(trained_bundle, "red", k=3, filters={"color": "red"})  # filters still work


def test_filters_are_bounded_and_checked(index_copy, trained_bundle):
    idx = Index.open(index_copy, bundle=trained_bundle)
    with pytest.raises(IndexInputError, match="over the limit"):
        idx.search_text(trained_bundle, "red", k=3, filters={f"k{i}": 1 for i in range(999)})
    assert idx.search_text(trained_bundle, "red", k=3, filters={f"k{i}": 1 for i in range(64)}) == []
    with pytest.raises(IndexInputError, match="finite"):
        idx.search_text(trained_bundle, "red", k=3, filters={"x": float("inf")})
    # each value is a bound SQL parameter, four times for a dotted non-ASCII key: past SQLite's limit before
    with pytest.raises(IndexInputError, match="1024 values in all"):
        idx.search_text(trained_bundle, "red", k=3, filters={"a.ü": list(range(70_000))})
    with pytest.raises(IndexInputError, match="unknown id"):
        idx.get(2**70)


def test_nested_metadata_is_filtered_by_a_dotted_path(index_copy, trained_bundle):
    """Metadata may hold objects ({"exif": {"camera": ...}}): stored and returned, but no filter could reach
    inside them. A dotted key is a path into them; a key that is not a field or a path is refused."""
    idx = Index.open(index_copy, bundle=trained_bundle)
    ids = idx.add(
        trained_bundle,
        [
            (png_bytes((220, 40, 40)), "red", {"exif": {"camera": "X100", "iso": 200}, "größe": "groß"}),
            (png_bytes((40, 80, 220)), "blue", {"exif": {"camera": "GR", "iso": 800}}),
        ],
    )
    q = np.ones((1, idx.dim), np.float32)

    def found(filters: dict) -> list[int]:
        return sorted(h.id for h in idx.search_vectors(q, k=20, filters=filters)[0])

    assert found({"exif.camera": "X100"}) == [ids[0]] and found({"exif.iso": [200, 800]}) == ids
    assert found({"exif.camera": "GR", "exif.iso": 200}) == [] and found({"größe": "groß"}) == [ids[0]]
    assert found({"exif.lens": "x"}) == [] and idx.get(ids[0]).extra["exif"] == {"camera": "X100", "iso": 200}
    # an object's (or list's) JSON text is not a value a string filter can equal
    assert found({"exif": json.dumps({"camera": "X100", "iso": 200}, separators=(",", ":"))}) == []
    # keys go to SQLite as bound parameters: quotes, spaces, combining accents are plain characters
    assert found({"a') OR 1=1 --": 1}) == [] and found({"e\u0301": 1}) == [] and found({"camera model": "x"}) == []
    # a flat key with a dot in it (flattened EXIF, CSV headers) is found by the same dotted key
    flat = idx.add(trained_bundle, [(png_bytes((40, 200, 40)), "green", {"exif.camera": "X100", "a.b.c": 1})])
    assert found({"exif.camera": "X100"}) == sorted([ids[0], *flat]) and found({"a.b.c": 1}) == flat
    assert found({"exif.camera": "X100", "exif.iso": 200}) == [ids[0]]
    for bad in ("exif..camera", ".exif", "exif.", 'a"b', "a\\b", "a\x00b", "x" * 65, ".".join("abcdefghi")):
        with pytest.raises(IndexInputError, match="filter key"):
            found({bad: 1})


def test_non_ascii_keys_of_rows_stored_escaped_are_found(tmp_path):
    """Rows written before 2026-12-01 hold non-ASCII keys as \\u escapes, which SQLite's JSON paths match only as
    spelled: an index mixing old and new rows answered a filter with some of its matches."""
    from clipforge.index.meta import MetaReader, MetaWriter

    writer = MetaWriter(tmp_path / "meta.sqlite")
    old = json.dumps({"größe": "groß"})  # the old spelling: "gr\u00f6\u00dfe"
    new = json.dumps({"größe": "groß"}, ensure_ascii=False)
    writer.insert([(1, "a", None, "s", None, None, 1, 1, old), (2, "b", None, "s", None, None, 1, 1, new)])
    writer.close()
    assert "\\u00f6" in old and MetaReader(tmp_path / "meta.sqlite").filter_ids({"größe": "groß"}) == [1, 2]
