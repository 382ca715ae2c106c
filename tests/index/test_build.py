import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipforge.encoders.bundle import load_bundle
from clipforge.index import Index, IndexInputError, IndexMismatchError
from clipforge.index.build import embed_to_parts
from clipforge.index.choice import choose_factory


def test_manifest_binds_the_bundle_and_records_the_build(built_index, trained_bundle):
    m = json.loads((built_index / "manifest.json").read_text())
    assert m["fingerprint"] == trained_bundle.fingerprint and m["dim"] == 32
    assert m["metric"] == "inner_product" and m["normalized"] is True
    assert m["images"]["factory"] == "Flat" and m["images"]["recall@10"] == 1.0
    assert m["counts"] == {"items": 600, "images": 600, "captions": 600, "skipped": {}}
    assert m["provenance"]["embedding"]["images_per_s"] > 0 and m["files"]["images.faiss"] > 0
    assert (built_index / m["version_dir"] / "meta.sqlite").is_file()


def test_fingerprint_mismatch_is_refused(built_index, micro_bundle, trained_bundle):
    other = load_bundle(micro_bundle)
    with pytest.raises(IndexMismatchError, match="fingerprint"):
        Index.open(built_index, bundle=other)
    idx = Index.open(built_index)
    with pytest.raises(IndexMismatchError):
        idx.search_text(other, "a red square")
    with pytest.raises(IndexMismatchError):
        idx.add(other, [])
    assert Index.open(built_index, bundle=trained_bundle).fingerprint == trained_bundle.fingerprint


def test_ivf_build_tunes_nprobe_and_records_recall(trained_bundle, synth_data, built_index, tmp_path):
    idx = Index.build(trained_bundle, synth_data["train"], tmp_path / "ivf", factory="IVF8,Flat", progress=False)
    section = idx.info()["images"]
    assert section["factory"] == "IVF8,Flat" and section["recall_queries"] == 200
    assert section["recall@10"] >= 0.95 and 1 <= section["search_params"]["nprobe"] <= 8
    exact = {h.id for h in Index.open(built_index).search_id(4, k=10)}
    assert len(exact & {h.id for h in idx.search_id(4, k=10)}) >= 8  # IVF at the tuned nprobe ~ exact
    assert idx.remove([4]) == 1 and len(idx) == 599  # IVF removes for real (scanning its lists)
    assert idx.info()["images"]["tombstones"] == 0


def test_choose_factory_follows_count_and_budget():
    assert choose_factory(1000, 512) == "Flat"
    assert choose_factory(100_000, 512) == "IVF1024,PQ64"  # ~4 sqrt(n) lists, HNSW over >= 4096 centroids
    assert choose_factory(1_000_000, 512) == "IVF4096_HNSW32,PQ64"
    assert choose_factory(1_000_000, 512, memory_budget_mb=1000).endswith("SQ8")  # ~1 KB per vector affordable
    # the coarse quantizer and PQ codebook count against the budget too: fewer lists, 6-bit codes
    assert choose_factory(20_000, 512, memory_budget_mb=1) == "IVF128,PQ32x6"  # Flat would not fit 1 MB
    assert choose_factory(100_000, 512, memory_budget_mb=100 * 100_000 / 2**20) == "IVF1024,PQ64"
    assert choose_factory(1_000_000, 512, memory_budget_mb=100 * 1_000_000 / 2**20) == "IVF4096_HNSW32,PQ64"
    with pytest.raises(IndexInputError):
        choose_factory(1_000_000, 512, memory_budget_mb=1)


def test_budgeted_index_fits_its_budget(tmp_path):
    """The index choose_factory picks for a budget serialises (codes, ids, id map, centroids, codebook) within it."""
    import faiss

    from clipforge.index import faiss_index

    n, dim, budget_mb = 60_000, 64, 40 * 60_000 / 2**20  # 40 B/vector: too little for the default PQ32
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((200, dim))[rng.integers(0, 200, n)] + 0.3 * rng.standard_normal((n, dim))).astype(
        np.float32
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    factory = choose_factory(n, dim, budget_mb)
    index = faiss_index.make_index(factory, dim)
    faiss_index.train(index, x[rng.choice(n, faiss_index.training_size(index), replace=False)], factory)
    faiss_index.add_chunks(index, [(np.arange(n), x)])
    path = tmp_path / "i.faiss"
    faiss_index.write(index, str(path))
    assert path.stat().st_size <= budget_mb * 2**20, factory
    index = faiss.read_index(str(path))
    before = faiss_index.reconstruct(index, [7, 8])  # the id map is rebuilt on first use
    assert before.shape == (2, dim) and np.dot(before[0], x[7]) > 0.9
    assert faiss_index.remove(index, np.array([7])) and index.ntotal == n - 1
    np.testing.assert_array_equal(faiss_index.reconstruct(index, [8]), before[1:])
    with pytest.raises(RuntimeError):
        faiss_index.reconstruct(index, [7])


def write_folder(root: Path) -> None:
    root.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (20 + i, 16), colour).save(root / f"img{i}.png")
    (root / "img0.txt").write_text("  a red\n picture ")
    (root / "img1.json").write_text(json.dumps({"licence": "cc0"}))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (root / "notes.md").write_text("not an image")


def test_folder_build_skips_and_counts_corrupt_images(trained_bundle, tmp_path):
    write_folder(tmp_path / "photos")
    idx = Index.build(trained_bundle, str(tmp_path / "photos"), tmp_path / "idx", progress=False)
    assert len(idx) == 3 and idx.info()["counts"]["skipped"] == {"bad_image": 1}
    assert idx.info()["counts"]["captions"] == 1
    items = {idx.get(i).key: idx.get(i) for i in range(3)}
    assert items["img0"].caption == "a red picture" and items["img1"].extra == {"licence": "cc0"}
    assert (items["img2"].width, items["img2"].height) == (22, 16)
    data, mime = idx.read_image_bytes(items["img1"].id)
    assert mime == "image/png" and data == (tmp_path / "photos" / "img1.png").read_bytes()


def test_empty_or_missing_data_is_a_clear_error(trained_bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexInputError, match="no usable images"):
        Index.build(trained_bundle, str(tmp_path / "empty"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-built left behind
    with pytest.raises(FileNotFoundError, match="shard not found"):
        Index.build(trained_bundle, str(tmp_path / "nope-{0..1}.tar"), tmp_path / "out", progress=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(IndexInputError, match="not empty"):
        Index.build(trained_bundle, str(tmp_path / "empty"), tmp_path / "taken", progress=False)
    with pytest.raises(FileNotFoundError, match="not a clipforge index"):
        Index.open(tmp_path / "taken")


def test_truncated_or_missing_files_are_clear_errors(index_copy):
    vdir = index_copy / json.loads((index_copy / "manifest.json").read_text())["version_dir"]
    faiss_file = vdir / "images.faiss"
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexInputError, match="truncated"):
        Index.open(index_copy)
    faiss_file.write_bytes(data)
    assert len(Index.open(index_copy)) == 600
    (vdir / "meta.sqlite").unlink()
    with pytest.raises(IndexInputError, match="missing"):
        Index.open(index_copy)
    (index_copy / "manifest.json").write_text("{truncated")
    with pytest.raises(IndexInputError, match="not valid JSON"):
        Index.open(index_copy)


def test_embedding_split_over_processes_merges(trained_bundle, micro_bundle, synth_data, tmp_path):
    """Two embedding jobs over disjoint shard ranges, merged into one index with re-based ids."""
    root = Path(synth_data["root"]) / "train"
    embed_to_parts(trained_bundle, str(root / "shard-{000000..000001}.tar"), tmp_path / "p0", progress=False)
    embed_to_parts(trained_bundle, str(root / "shard-000002.tar"), tmp_path / "p1", progress=False)
    idx = Index.merge_parts(trained_bundle, [tmp_path / "p0", tmp_path / "p1"], tmp_path / "merged")
    assert len(idx) == 300 and idx.info()["images"]["count"] == 300
    assert idx.get(200).key == "00000200" and idx.get(200).source.endswith("shard-000002.tar")
    ref = trained_bundle.encode_images(trained_bundle.preprocess([_first_image(root / "shard-000002.tar")])).numpy()
    assert np.allclose(idx._current().images.reconstruct(200), ref[0], atol=1e-5)  # job 2's first item is id 200
    with pytest.raises(IndexMismatchError):
        Index.merge_parts(load_bundle(micro_bundle), [tmp_path / "p0"], tmp_path / "other")
    assert not (tmp_path / "other").exists()


def _first_image(shard: Path) -> Image.Image:
    import tarfile

    with tarfile.open(shard) as tf:
        member = next(m for m in tf if m.name.endswith(".jpg"))
        return Image.open(tf.extractfile(member)).convert("RGB")


@pytest.mark.parametrize(
    "factory, match",
    [
        ("IVF0,Flat", "must be at least 1"),  # parsed by FAISS, but no lists: it answered nothing (recall -1)
        ("HNSW1", "at least 2 links"),  # aborts the process inside FAISS
        ("IVF8,PQ4x0", "must be at least 1"),  # likewise
        ("Nonsense", "could not parse index string Nonsense"),
        ("IVF8,PQ7", "multiple of the number of subquantizers"),
        ("IDMap2,Flat", "leave out IDMap"),
        ("", "a FAISS factory string"),
    ],
)
def test_a_bad_factory_is_refused_before_embedding(trained_bundle, synth_data, tmp_path, monkeypatch, factory, match):
    embedded: list[int] = []
    monkeypatch.setattr("clipforge.index.core.embed_to_parts", lambda *a, **k: embedded.append(1))
    with pytest.raises(IndexInputError, match=match) as info:
        Index.build(trained_bundle, synth_data["val"], tmp_path / "o", factory=factory, progress=False)
    assert "\n" not in str(info.value) and "faiss::" not in str(info.value)  # one line, FAISS's words only
    assert not embedded and not (tmp_path / "o").exists()


def test_cli_build_with_an_unsearchable_factory_fails_with_one_line(trained_bundle, synth_data, tmp_path, capsys):
    from clipforge.cli import main

    argv = [
        "index",
        "build",
        "--bundle",
        str(trained_bundle.path),
        "--data",
        synth_data["val"],
        "--out",
        str(tmp_path / "o"),
        "--factory",
        "IVF0,Flat",
        "--quiet",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "IVF0,Flat" in err and not (tmp_path / "o").exists()


def test_an_index_whose_recall_is_not_a_number_is_never_published(trained_bundle, synth_data, tmp_path, monkeypatch):
    """Whatever makes the tuner come back without a recall (NaN, or -1 when no setting answered), the index
    is not published: a searchable-looking index that finds nothing is worse than an error."""
    from clipforge.index import tuning

    for bad in (float("nan"), -1.0):
        monkeypatch.setattr(tuning, "tune", lambda *a, bad=bad, **k: ({}, bad))
        with pytest.raises(IndexInputError, match="answers no query") as info:
            Index.build(
                trained_bundle, synth_data["train"], tmp_path / "o", factory="IVF8,Flat", progress=False, refine=False
            )
        assert "\n" not in str(info.value) and not (tmp_path / "o").exists()


def test_a_factory_it_cannot_train_or_no_captions_is_said_not_silent(trained_bundle, synth_data, tmp_path, caplog):
    """An explicit factory too big for the data falls back to exact search, and a caption key that finds
    nothing leaves caption search empty: both still build, and both say so."""
    with caplog.at_level("WARNING", logger="clipforge.index.build"):
        idx = Index.build(
            trained_bundle,
            synth_data["val"],
            tmp_path / "a",
            factory="IVF100000,Flat",
            progress=False,
            caption_key="json:nokey",
        )
    assert idx.info()["images"]["factory"] == "Flat" and idx.info()["captions"]["count"] == 0
    text = caplog.text
    assert "too few to train 'IVF100000,Flat'" in text and "no captions found" in text
