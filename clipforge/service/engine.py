"""The model side of the service: batched encoders, image decoding, and the label-set embedding cache."""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import anyio
import numpy as np
import torch

from clipforge.encoders.bundle import Bundle
from clipforge.encoders.prompts import ensemble, fill
from clipforge.service.batcher import MicroBatcher
from clipforge.service.decode import DecodePool, ImagePrep, Prepared, api_error
from clipforge.service.errors import APIError
from clipforge.service.settings import Settings

LabelKey = tuple[str, tuple[str, ...], tuple[str, ...]]  # (fingerprint, labels, templates)


class LabelCache:
    """LRU of class embeddings [L, D]. Concurrent misses on one key share one computation, which runs as
    its own task: a client that disconnects mid-way does not cancel it for the others."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[LabelKey, np.ndarray] = OrderedDict()
        self._inflight: dict[LabelKey, asyncio.Task[np.ndarray]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_compute(
        self, key: LabelKey, compute: Callable[[], Awaitable[np.ndarray]]
    ) -> tuple[np.ndarray, bool]:
        """(value, was_cached); a request that joins a computation in flight counts as cached."""
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key], True
        task = self._inflight.get(key)
        cached = task is not None
        if task is None:
            self.misses += 1
            task = self._inflight[key] = asyncio.ensure_future(self._fill(key, compute))
        else:
            self.hits += 1
        return await asyncio.shield(task), cached

    async def _fill(self, key: LabelKey, compute: Callable[[], Awaitable[np.ndarray]]) -> np.ndarray:
        try:
            value = await compute()
        finally:
            self._inflight.pop(key, None)
        if self.capacity > 0:
            self._entries[key] = value
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return value


def set_encoder_threads(settings: Settings) -> None:
    """Give the encoders the configured share of the cores. Called before the bundle loads, because ONNX
    Runtime fixes its thread pool when its session is made (from torch's count: `encoders.bundle`)."""
    threads = settings.torch_threads
    if not threads and settings.workers > 1:  # the workers share the cores instead of each taking all
        threads = max(1, len(os.sched_getaffinity(0)) // settings.workers)
    if threads:
        torch.set_num_threads(threads)


class Engine:
    """A loaded bundle behind the micro-batcher. Start/stop it inside the running event loop."""

    def __init__(self, bundle: Bundle, settings: Settings, on_batch: Callable[[str, int, float], None] | None = None):
        self.bundle = bundle
        self.settings = settings
        self.batcher = MicroBatcher(
            {"text": self.encode_text_batch, "image": self.encode_pixel_batch},
            prepare={"image": self.prepare_images},
            prepare_threads=settings.prepare_threads,
            max_batch=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000,
            on_batch=on_batch,
        )
        self.labels = LabelCache(settings.label_cache_size)
        meta_bias = bundle.meta.get("logit_bias")
        self.logit_bias = float(meta_bias) if meta_bias is not None else 0.0
        self._logit_scale = bundle.logit_scale()
        self._decoders: anyio.CapacityLimiter | None = None
        self.image_prep = ImagePrep(bundle.meta["preprocess"], settings.max_image_pixels)
        self.decode_pool: DecodePool | None = None  # set by start_decode_pool(); until then, decode in-process

    # --- run on the batcher's threads (public so that benchmarks time exactly what the server runs) ---
    def prepare_images(self, items: list[tuple[bytes, int]]) -> list[Prepared | APIError]:
        """(untrusted bytes, index in its request) -> prepared pixels (see service.decode), or the APIError
        for that image; in the decode worker processes when they run, else on this thread."""
        blobs = [blob for blob, _ in items]
        results = self.decode_pool.decode(blobs) if self.decode_pool is not None else self.image_prep.chunk(blobs)
        return [api_error(r, i) if isinstance(r, tuple) else r for r, (_, i) in zip(results, items, strict=True)]

    def encode_text_batch(self, texts: list[str]) -> np.ndarray:
        return self.bundle.encode_texts(texts).numpy()  # [N, D]

    def encode_pixel_batch(self, pixels: list[Prepared]) -> np.ndarray:
        batch = self.image_prep.batch(pixels)  # [N, 3, H, W] float32
        return self.bundle.encode_images(batch).numpy()  # [N, D]

    # --- public, async ---
    @property
    def fingerprint(self) -> str:
        return self.bundle.fingerprint

    @property
    def embed_dim(self) -> int:
        return self.bundle.embed_dim

    @property
    def loss(self) -> str:
        return self.bundle.loss

    def logit_scale(self) -> float:
        return self._logit_scale

    def start_decode_pool(self) -> None:
        """Blocking (the first worker imports torch): run from a worker thread before `start`."""
        if self.settings.decode_processes > 0 and self.decode_pool is None:
            pool = DecodePool(
                self.bundle.meta["preprocess"], self.settings.max_image_pixels, self.settings.decode_processes
            )
            try:
                pool.start()
            except BaseException:
                pool.close()
                raise
            self.decode_pool = pool

    def start(self) -> None:
        set_encoder_threads(self.settings)
        # decoding is CPU work too: a few threads are enough, more only fight the model for the cores
        self._decoders = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
        self.batcher.start()

    async def stop(self) -> None:
        if self.decode_pool is not None:  # first, so that a chunk being decoded fails now instead of finishing
            await anyio.to_thread.run_sync(self.decode_pool.close)
        await self.batcher.stop()

    async def encode_texts(self, texts: list[str]) -> np.ndarray:
        return await self.batcher.encode("text", texts)

    async def decode_images(self, blobs: list[bytes]) -> list[Prepared]:
        """Untrusted bytes -> prepared pixels, off the event loop (in the decode workers when they run);
        raises the first bad image's APIError (4xx)."""
        out = await anyio.to_thread.run_sync(
            lambda: self.prepare_images([(b, i) for i, b in enumerate(blobs)]), limiter=self._decoders
        )
        for res in out:
            if isinstance(res, APIError):
                raise res
        return out

    async def encode_images(self, blobs: list[bytes]) -> np.ndarray:
        """Decoded, preprocessed and encoded in the batcher's pipeline; a bad image -> its APIError (4xx)."""
        return await self.batcher.encode("image", [(b, i) for i, b in enumerate(blobs)])

    async def class_embeddings(self, labels: list[str], templates: list[str]) -> tuple[np.ndarray, bool]:
        """[L, D] class embeddings: the renormalised mean over prompt templates; (value, was_cached)."""
        key: LabelKey = (self.fingerprint, tuple(labels), tuple(templates))

        async def compute() -> np.ndarray:
            return ensemble(await self.encode_texts(fill(templates, labels)), len(labels))  # [L*T, D] -> [L, D]

        return await self.labels.get_or_compute(key, compute)

    def scores(self, similarity: np.ndarray) -> np.ndarray:
        """Cosines [N, L] of images and labels -> [N, L] probabilities: softmax over labels (InfoNCE) or
        per-label sigmoid (SigLIP)."""
        logits = self.logit_scale() * similarity  # [N, L]
        if self.loss == "siglip":
            with np.errstate(over="ignore"):  # exp overflow -> inf -> a score of exactly 0, as it should be
                return 1.0 / (1.0 + np.exp(-(logits + self.logit_bias)))
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)
