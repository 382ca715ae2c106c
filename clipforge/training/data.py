"""WebDataset input: seeded shard/sample shuffling, worker and rank splitting, exact mid-epoch resume.

The stream seen by one DataLoader worker is a pure function of (seed, epoch, rank, worker): shards are
ordered by an epoch-seeded RNG, split as shards[g::G] over G = world_size * workers, read with webdataset's
tar iterators (so local paths, brace patterns and `pipe:` URLs all work) and passed through a seeded
shuffle buffer. Each batch carries (epoch, cursor), the number of raw samples its worker has drawn in that
epoch; resuming replays the raw stream up to the cursor without decoding images, so a restarted run sees
exactly the samples it had not seen yet.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipforge.data.shards import decode_sample, expand_urls, raw_samples  # noqa: F401 (re-exported)
from clipforge.encoders.images import DEFAULT_MAX_PIXELS
from clipforge.encoders.text import MAX_CAPTION_CHARS
from clipforge.training.config import DataCfg

log = logging.getLogger(__name__)


def seeded_shuffle(items: Iterator[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    if bufsize <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        i = rng.randrange(len(buf))
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


@dataclass
class StreamSpec:
    sources: list[list[str]]  # expanded shard URLs per source
    weights: list[float]
    resampled: bool = False
    shard_shuffle: bool = True
    sample_shuffle: int = 2000
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    caption_key: str = "txt"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_caption_chars: int = MAX_CAPTION_CHARS
    resume: dict[int, tuple[int, int]] = field(default_factory=dict)  # worker -> (epoch, cursor)
    first_worker: int = 0  # logical worker that yields the next batch (DataLoader starts at worker slot 0)

    @classmethod
    def from_config(cls, data: DataCfg, seed: int, rank: int, world_size: int, state: DataState) -> StreamSpec:
        """This rank's stream per the `data` section, continuing from `state` (a fresh one: from the start)."""
        sources = [expand_urls(s) for s in data.train]
        weights = list(data.weights) or [1.0] * len(sources)
        if len(weights) != len(sources):
            raise ValueError(f"data.weights has {len(weights)} entries for {len(sources)} sources")
        same = ("shard_shuffle", "sample_shuffle", "caption_key", "max_pixels", "max_caption_chars")
        return cls(
            sources=sources,
            weights=weights,
            resampled=data.draws_with_replacement,
            seed=seed,
            rank=rank,
            world_size=world_size,
            resume=state.positions,
            first_worker=state.first_worker,
            **{k: getattr(data, k) for k in same},
        )


class ShardStream(IterableDataset):
    """Endless stream of training batches {image, text, state, stats} built in worker processes."""

    def __init__(self, spec: StreamSpec, transform: Any, tokenizer: Any, batch_size: int, draft_size: int):
        super().__init__()
        if not spec.sources or not all(spec.sources):
            raise ValueError("no training shards given (data.train is empty)")
        self.spec, self.transform, self.tokenizer = spec, transform, tokenizer
        self.batch_size, self.draft_size = batch_size, draft_size

    def _epoch_shards(self, epoch: int, worker: int, workers: int) -> list[str]:
        s = self.spec
        g, total = s.rank * workers + worker, s.world_size * workers
        if s.resampled:  # with replacement; each (rank, worker) draws its own shards
            rng = random.Random(f"{s.seed}/{epoch}/{s.rank}/{worker}/shards")
            n_all = sum(len(src) for src in s.sources)
            draws = max(1, -(-n_all // total))
            return [rng.choice(rng.choices(s.sources, weights=s.weights)[0]) for _ in range(draws)]
        shards = [u for src in s.sources for u in src]
        if s.shard_shuffle:
            random.Random(f"{s.seed}/{epoch}/shards").shuffle(shards)
        return shards[g::total]  # disjoint across ranks and workers

    def _worker_stream(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        s = self.spec
        epoch, skip = s.resume.get(worker, (0, 0))
        stats: Counter = Counter()
        images: list[torch.Tensor] = []
        captions: list[str] = []
        keys: list[str] = []
        while True:
            shards = self._epoch_shards(epoch, worker, workers)
            if not shards:
                log.warning("worker %d of rank %d has no shards: use fewer workers than shards", worker, s.rank)
                return
            before = stats["shard_error"]
            rng = random.Random(f"{s.seed}/{epoch}/{s.rank}/{worker}/samples")
            raw = seeded_shuffle(raw_samples(shards, stats), s.sample_shuffle, rng)
            cursor, good, pre = 0, 0, Counter(stats)
            for sample in raw:
                cursor += 1
                if cursor <= skip:
                    if cursor == skip:  # the checkpoint's counts already hold what the replay read: not twice
                        stats.clear()
                        stats.update(pre)
                    continue  # replaying up to the resume point: no decoding
                out = decode_sample(sample, s.caption_key, s.max_pixels, self.draft_size, s.max_caption_chars)
                if isinstance(out, str):
                    stats[out] += 1
                    continue
                good += 1
                images.append(self.transform(out[0]))
                captions.append(out[1])
                keys.append(f"{sample.get('__url__')}#{sample.get('__key__')}")
                if len(images) == self.batch_size:
                    yield {
                        "image": torch.stack(images),  # [B, 3, H, W]
                        "text": self.tokenizer(captions),  # [B, L]
                        "worker": worker,
                        "state": (epoch, cursor),
                        "stats": dict(stats),
                        "keys": keys,  # shard#key of each sample, for tests and debugging
                    }
                    images, captions, keys = [], [], []
            if stats["shard_error"] - before == len(shards):
                raise RuntimeError(f"all {len(shards)} shards of epoch {epoch} failed to open, e.g. {shards[0]}")
            if good == 0 and skip == 0:
                raise RuntimeError(f"epoch {epoch}: no usable samples in {len(shards)} shard(s): {dict(stats)}")
            epoch, skip = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        slot, workers = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader takes batches round-robin from slot 0; rotating logical ids keeps the global order exact
        return self._worker_stream((slot + self.spec.first_worker) % workers, workers)


class DataState:
    """Tracks, in the training process, each worker's resume point and bad-sample counts."""

    def __init__(self, resume: dict[int, tuple[int, int]] | None = None) -> None:
        self.positions: dict[int, tuple[int, int]] = dict(resume or {})
        self.worker_stats: dict[int, dict[str, int]] = {}
        self.base_stats: Counter = Counter()  # counts from before a resume
        self.last_worker: int | None = None
        self.first_worker = 0  # where a resumed stream starts

    def update(self, batch: dict[str, Any]) -> None:
        w = int(batch["worker"])
        self.last_worker = w
        self.positions[w] = tuple(int(x) for x in batch["state"])  # type: ignore[assignment]
        self.worker_stats[w] = batch["stats"]

    @property
    def skipped(self) -> dict[str, int]:
        total = Counter(self.base_stats)
        for st in self.worker_stats.values():
            total.update(st)
        return dict(total)

    def state_dict(self, workers: int) -> dict[str, Any]:
        return {
            "workers": workers,
            "next_worker": 0 if self.last_worker is None else (self.last_worker + 1) % max(workers, 1),
            "positions": {str(k): list(v) for k, v in self.positions.items()},
            "skipped": self.skipped,
        }

    @classmethod
    def from_state_dict(cls, sd: dict[str, Any] | None, workers: int) -> DataState:
        if not sd:
            return cls()
        positions = _positions(sd)
        if sd.get("workers") != workers:
            log.warning("data.workers changed since the checkpoint: restarting the data stream at an epoch start")
            state = cls.after_epoch(max((p[0] for p in positions.values()), default=0), workers)
        else:
            state = cls(positions)
            state.first_worker = int(sd.get("next_worker", 0))
        state.base_stats = Counter(sd.get("skipped", {}))
        return state

    @classmethod
    def for_rank(cls, ranks: dict[str, Any], rank: int, world_size: int, workers: int) -> DataState:
        """This rank's state from a checkpoint's {rank: state dict}. Positions are cursors into the shards
        the old (rank, worker) split dealt out: with another number of ranks they point at other shards, and
        new ranks have none, so every rank starts the epoch after the furthest one any rank reached."""
        if not ranks or len(ranks) == world_size:
            return cls.from_state_dict(ranks.get(str(rank)) if ranks else None, workers)
        log.warning(
            "the checkpoint was written by %d rank(s), this run has %d: restarting the data stream at an epoch start",
            len(ranks),
            world_size,
        )
        epoch = max((p[0] for sd in ranks.values() for p in _positions(sd).values()), default=0)
        state = cls.after_epoch(epoch, workers)
        if rank == 0:  # the counts so far, of every old rank, carried once (the totals sum over ranks)
            for sd in ranks.values():
                state.base_stats.update(sd.get("skipped", {}))
        return state

    @classmethod
    def after_epoch(cls, epoch: int, workers: int) -> DataState:
        """Every worker at the start of epoch `epoch` + 1."""
        return cls({w: (epoch + 1, 0) for w in range(max(workers, 1))})


def _positions(sd: dict[str, Any]) -> dict[int, tuple[int, int]]:
    return {int(k): (int(v[0]), int(v[1])) for k, v in sd.get("positions", {}).items()}


def make_loader(stream: ShardStream, workers: int) -> DataLoader:
    return DataLoader(
        stream,
        batch_size=None,  # the stream batches itself
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )
