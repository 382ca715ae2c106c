import io
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from clipforge.encoders.model import get_tokenizer, preprocess_cfg, resolve_model_config, tokenizer_cfg
from clipforge.training.augment import TrainTransform
from clipforge.training.data import DataState, ShardStream, StreamSpec, expand_urls, make_loader
from tests.encoders.test_images import huge_png


def make_stream(urls, batch_size=10, **kw) -> ShardStream:
    _, cfg = resolve_model_config("cf-micro-vit")
    spec = StreamSpec(sources=[urls], weights=[1.0], sample_shuffle=kw.pop("sample_shuffle", 20), **kw)
    return ShardStream(
        spec,
        TrainTransform(preprocess_cfg(cfg)["image_size"]),
        get_tokenizer(tokenizer_cfg(cfg)),
        batch_size,
        draft_size=64,
    )


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def messy_shard(path: Path) -> dict[str, int]:
    """A shard mixing good samples with every kind of bad one; returns the expected skip counts."""
    good = encode(Image.new("RGB", (40, 30), (200, 10, 10)), "JPEG")
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 10, 20))
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "palette", "png": encode(pal, "PNG", transparency=0), "txt": "a green bar"})
        sink.write(
            {
                "__key__": "cmyk",
                "jpg": encode(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG"),
                "txt": "a cmyk red",
            }
        )
        sink.write({"__key__": "gray16", "png": encode(Image.new("I;16", (20, 20), 30000), "PNG"), "txt": "grey"})
        sink.write({"__key__": "corrupt", "jpg": b"\xff\xd8\xff\xe0garbage" * 10, "txt": "corrupt jpeg"})
        sink.write({"__key__": "truncated", "jpg": good[: len(good) // 3], "txt": "truncated jpeg"})
        sink.write({"__key__": "bomb", "png": huge_png(30_000, 30_000), "txt": "a huge png"})
        sink.write({"__key__": "nocaption", "jpg": good})
        sink.write({"__key__": "emptycaption", "jpg": good, "txt": "   "})
        sink.write({"__key__": "json_only", "jpg": good, "json": b'{"caption": "x"}'})
        for i in range(8):
            sink.write({"__key__": f"good{i}", "jpg": good, "txt": f"a red square number {i}"})
    return {"bad_image": 2, "image_too_large": 1, "no_caption": 3}


def test_messy_shard_keeps_good_samples_and_counts_bad_ones(tmp_path):
    expected = messy_shard(tmp_path / "messy.tar")
    stream = make_stream([str(tmp_path / "messy.tar")], batch_size=11, sample_shuffle=0)
    batch = next(iter(stream))
    assert batch["image"].shape == (11, 3, 32, 32)
    keys = {k.split("#")[1] for k in batch["keys"]}
    assert {"palette", "cmyk", "gray16"} <= keys
    assert not keys & {"corrupt", "truncated", "bomb", "nocaption", "emptycaption", "json_only"}
    assert batch["stats"] == expected


def test_caption_from_json_field(tmp_path):
    good = encode(Image.new("RGB", (8, 8)), "JPEG")
    with wds.TarWriter(str(tmp_path / "j.tar")) as sink:
        for i in range(4):
            sink.write({"__key__": f"k{i}", "jpg": good, "json": f'{{"caption": "cap {i}"}}'.encode()})
    stream = make_stream([str(tmp_path / "j.tar")], batch_size=4, caption_key="json:caption")
    assert next(iter(stream))["text"].shape == (4, 12)


def test_json_members_that_are_not_objects_are_skipped_and_counted(tmp_path):
    """`null`, a list or a bare string in the json member: skipped as bad captions, not a crash mid-epoch."""
    good = encode(Image.new("RGB", (8, 8)), "JPEG")
    with wds.TarWriter(str(tmp_path / "j.tar")) as sink:
        for i, raw in enumerate([b"null", b"[1, 2]", b'"just text"', b"{not json"]):
            sink.write({"__key__": f"bad{i}", "jpg": good, "json": raw})
        for i in range(4):
            sink.write({"__key__": f"k{i}", "jpg": good, "json": f'{{"caption": "cap {i}"}}'.encode()})
    stream = make_stream([str(tmp_path / "j.tar")], batch_size=4, caption_key="json:caption", sample_shuffle=0)
    batch = next(iter(stream))
    assert sorted(k.split("#")[1] for k in batch["keys"]) == ["k0", "k1", "k2", "k3"]
    assert batch["stats"]["bad_caption"] == 4


def test_broken_shard_warns_and_all_broken_is_an_error(tmp_path, synth_data):
    urls = expand_urls(synth_data["train"])
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(Path(urls[0]).read_bytes()[:20_000])  # cut mid-member
    with pytest.warns(UserWarning, match="cannot be opened"):
        stream = make_stream([str(tmp_path / "missing.tar"), str(truncated), urls[1]], shard_shuffle=False)
        batches = [b for _, b in zip(range(12), iter(stream), strict=False)]
    assert batches[-1]["stats"]["shard_error"] >= 1
    assert batches[-1]["stats"]["broken_member"] >= 1
    with pytest.raises(RuntimeError, match="failed to open"), pytest.warns(UserWarning):
        next(iter(make_stream([str(tmp_path / "missing1.tar"), str(tmp_path / "missing2.tar")])))


def test_pipe_urls_work(synth_data):
    url = expand_urls(synth_data["train"])[0]
    batch = next(iter(make_stream([f"pipe:cat {url}"])))
    assert batch["image"].shape[0] == 10


def epoch0_keys(stream: ShardStream, workers: int) -> list[str]:
    keys = []
    for batch in make_loader(stream, workers):
        if batch["state"][0] > 0:
            break
        keys.extend(batch["keys"])
    return keys


def test_no_sample_seen_twice_in_an_epoch_across_2_ranks_x_2_workers(synth_data):
    urls = expand_urls(synth_data["train"])  # 6 shards x 100
    seen: Counter = Counter()
    for rank in range(2):
        keys = []
        loader = make_loader(make_stream(urls, rank=rank, world_size=2, seed=3), 2)
        per_worker_epoch: dict[int, int] = {}
        for batch in loader:
            per_worker_epoch[batch["worker"]] = batch["state"][0]
            if batch["state"][0] == 0:
                keys.extend(batch["keys"])
            if len(per_worker_epoch) == 2 and min(per_worker_epoch.values()) >= 1:
                break
        seen.update(keys)
    assert len(seen) == 600
    assert max(seen.values()) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_continues_exactly(synth_data, workers):
    urls = expand_urls(synth_data["train"])
    full = [b["keys"] for _, b in zip(range(14), make_loader(make_stream(urls, seed=5), workers), strict=False)]
    state = DataState()
    for _, b in zip(range(5), make_loader(make_stream(urls, seed=5), workers), strict=False):
        state.update(b)
    restored = DataState.from_state_dict(state.state_dict(max(workers, 1)), max(workers, 1))
    resumed_stream = make_stream(urls, seed=5, resume=restored.positions, first_worker=restored.first_worker)
    resumed = [b["keys"] for _, b in zip(range(9), make_loader(resumed_stream, workers), strict=False)]
    assert resumed == full[5:14]


def test_resuming_with_another_number_of_ranks_starts_every_rank_at_a_new_epoch():
    """Cursors index the shards the old (rank, worker) split dealt out: with 2 ranks resumed as 1 (or 1 as 2)
    they point at other shards, and a new rank had none, so its stream restarted at epoch 0 (replaying)."""
    two = {
        "0": {"workers": 2, "next_worker": 1, "positions": {"0": [3, 40], "1": [3, 38]}, "skipped": {"no_caption": 2}},
        "1": {"workers": 2, "next_worker": 0, "positions": {"0": [4, 2], "1": [3, 90]}, "skipped": {"no_caption": 1}},
    }
    same = DataState.for_rank(two, rank=1, world_size=2, workers=2)
    assert same.positions == {0: (4, 2), 1: (3, 90)} and same.first_worker == 0  # unchanged topology: exact
    for world_size in (1, 3):
        for rank in range(world_size):
            state = DataState.for_rank(two, rank=rank, world_size=world_size, workers=2)
            assert state.positions == {0: (5, 0), 1: (5, 0)}, (world_size, rank)  # after the furthest epoch
    assert DataState.for_rank(two, rank=0, world_size=1, workers=2).skipped == {"no_caption": 3}  # both ranks
    assert DataState.for_rank(two, rank=2, world_size=3, workers=2).skipped == {}  # counted once, on rank 0
    assert DataState.for_rank({}, rank=0, world_size=2, workers=2).positions == {}  # a fresh run


@pytest.mark.filterwarnings("ignore:.*cannot be opened")
def test_a_resumed_stream_does_not_count_again_what_its_replay_reads(synth_data, tmp_path):
    """Replaying to the resume point re-opens the shards before it: a shard that failed was counted in the
    checkpoint's totals and again by the replay."""
    urls = [str(tmp_path / "missing.tar"), *expand_urls(synth_data["train"])]

    def stream(**kw):  # noqa: ANN003, ANN202
        return make_loader(make_stream(urls, seed=5, shard_shuffle=False, **kw), 0)

    full = DataState()
    for _, b in zip(range(8), stream(), strict=False):
        full.update(b)
    state = DataState()
    for _, b in zip(range(3), stream(), strict=False):
        state.update(b)
    assert state.skipped == {"shard_error": 1}  # the missing shard, read first
    restored = DataState.from_state_dict(state.state_dict(1), 1)
    for _, b in zip(range(5), stream(resume=restored.positions, first_worker=restored.first_worker), strict=False):
        restored.update(b)
    assert restored.skipped == full.skipped == {"shard_error": 1}


def test_epochs_reshuffle_with_seed(synth_data):
    urls = expand_urls(synth_data["train"])
    a = next(iter(make_stream(urls, seed=1)))["keys"]
    b = next(iter(make_stream(urls, seed=1)))["keys"]
    c = next(iter(make_stream(urls, seed=2)))["keys"]
    assert a == b and a != c


def test_resampled_mix_draws_from_both_sources_by_weight(synth_data, tmp_path):
    urls = expand_urls(synth_data["train"])
    spec = StreamSpec(sources=[urls[:3], urls[3:]], weights=[0.75, 0.25], resampled=True, seed=0, sample_shuffle=0)
    _, cfg = resolve_model_config("cf-micro-vit")
    stream = ShardStream(
        spec, TrainTransform(preprocess_cfg(cfg)["image_size"]), get_tokenizer(tokenizer_cfg(cfg)), 50, draft_size=64
    )
    counts: Counter = Counter()
    for _, b in zip(range(80), iter(stream), strict=False):
        counts.update("A" if k.split("#")[0] in urls[:3] else "B" for k in b["keys"])
    assert counts["A"] > 1.5 * counts["B"] > 0


def test_resampled_mode_gives_each_rank_its_own_reproducible_stream(synth_data):
    urls = expand_urls(synth_data["train"])

    def first_keys(rank: int) -> list[str]:
        stream = make_stream(urls, rank=rank, world_size=2, seed=4, resampled=True, sample_shuffle=0)
        return [k for _, b in zip(range(12), iter(stream), strict=False) for k in b["keys"]]

    r0, r1 = first_keys(0), first_keys(1)
    assert r0 == first_keys(0)  # same seed and rank: same draws (resumable)
    assert len(set(r0) & set(r1)) < len(r0) // 2  # ranks draw shards independently, not in lockstep
    assert len({k.split("#")[0] for k in r0 + r1}) > 2  # over several shards


def test_tensor_types(synth_data):
    batch = next(iter(make_stream(expand_urls(synth_data["train"]))))
    assert batch["image"].dtype == torch.uint8 and batch["text"].dtype == torch.long  # normalised in the trainer


def test_mixing_weights_turn_on_resampling():
    """`data.weights` alone must not be ignored: weights only act when shards are drawn with replacement."""
    from clipforge.training.config import DataCfg

    state = DataState()
    plain = StreamSpec.from_config(DataCfg(train=("a.tar", "b.tar")), seed=0, rank=0, world_size=1, state=state)
    mixed = StreamSpec.from_config(
        DataCfg(train=("a.tar", "b.tar"), weights=(3.0, 1.0)), seed=0, rank=0, world_size=1, state=state
    )
    assert not plain.resampled
    assert mixed.resampled and mixed.weights == [3.0, 1.0]
