"""Service settings: one pydantic-settings model, read from CLIPFORGE_* environment variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from clipforge.encoders.prompts import DEFAULT_TEMPLATES, check_templates


class Settings(BaseSettings):
    """Everything the service can be told; `CLIPFORGE_BUNDLE=/models/b` sets `bundle`, and so on.

    Lists and dicts are given as JSON in the environment, e.g.
    `CLIPFORGE_LABEL_SETS='{"pets": ["cat", "dog"]}'`, `CLIPFORGE_CORS_ORIGINS='["https://a.example"]'`.
    """

    model_config = SettingsConfigDict(env_prefix="CLIPFORGE_", extra="ignore", frozen=True)

    # what to load
    bundle: Path | None = None
    index: Path | None = None
    index_mmap: bool = False  # memory-map the index's inverted lists (indexes larger than RAM)
    # fusion heads (clipforge.fusion) trained on this bundle; CLIPFORGE_HEADS=a,b or '["a", "b"]'
    heads: Annotated[list[Path], NoDecode] = []
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"  # torch | onnx | auto (ONNX Runtime on CPU when the bundle has ONNX graphs)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # security: writes need `api_key`, and are refused when none is configured; reads need `read_api_key`
    # (or the write key) when one is configured. Keys travel in the `X-API-Key` header.
    api_key: SecretStr | None = None
    read_api_key: SecretStr | None = None
    cors_origins: list[str] = []

    # limits on what a request may ask for
    max_request_bytes: int = Field(32 << 20, ge=1024)
    max_upload_bytes: int = Field(8 << 20, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=64)
    max_images: int = Field(16, ge=1)
    max_texts: int = Field(64, ge=1)
    max_labels: int = Field(256, ge=1)
    max_templates: int = Field(16, ge=1)
    max_text_chars: int = Field(300, ge=1)
    max_k: int = Field(100, ge=1)
    max_offset: int = Field(1000, ge=0)
    max_pairs: int = Field(16, ge=1)  # (image, text) pairs per head prediction

    # zero-shot classification
    templates: list[str] = list(DEFAULT_TEMPLATES)
    label_sets: dict[str, list[str]] = {}
    label_cache_size: int = Field(128, ge=0)

    # dynamic micro-batching of encoder calls
    max_batch_size: int = Field(64, ge=1)
    max_wait_ms: float = Field(2.0, ge=0.0)
    prepare_threads: int = Field(1, ge=1)  # image decode + preprocess threads, overlapping the encoder
    # worker processes that decode + preprocess images outside the server's GIL (which the event loop and
    # the encoder need), and outside the server: a codec that crashes takes down a worker, not the server.
    # 0 decodes on the prepare threads in this process. Off by default: `benchmarks/service_bench.py
    # --decode-processes 0,1` measures what 1 gives (benchmarks/RESULTS.md, "Service").
    decode_processes: int = Field(0, ge=0, le=64)
    # intra-op threads of the encoder; 0 leaves torch's default (one per core; with several workers, the
    # cores divided among them). Set for the whole process.
    torch_threads: int = Field(0, ge=0)
    # server processes (uvicorn workers), each with its own model copy, batcher and label cache, sharing the
    # port; the index is shared through its directory (every process follows updates), and /metrics adds
    # up all workers. More than 1 helps small models on many cores, where HTTP, not the model, is the limit.
    workers: int = Field(1, ge=1, le=64)

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, v: list[str]) -> list[str]:
        return list(check_templates(v))

    @field_validator("bundle", "index", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        """CLIPFORGE_INDEX= (empty) means no index, not the current directory (the image sets a default)."""
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("heads", mode="before")
    @classmethod
    def _heads_list(cls, v: Any) -> Any:
        """From the environment: a JSON list, or paths separated by commas."""
        if isinstance(v, str):
            v = json.loads(v) if v.lstrip().startswith("[") else [p.strip() for p in v.split(",") if p.strip()]
        return v

    @property
    def writes_enabled(self) -> bool:
        return self.api_key is not None and bool(self.api_key.get_secret_value())

    @property
    def reads_protected(self) -> bool:
        return self.read_api_key is not None and bool(self.read_api_key.get_secret_value())

    def limits(self) -> dict[str, int]:
        names = (
            "max_request_bytes",
            "max_upload_bytes",
            "max_image_pixels",
            "max_images",
            "max_texts",
            "max_labels",
            "max_templates",
            "max_text_chars",
            "max_k",
            "max_offset",
            "max_pairs",
        )
        return {n: getattr(self, n) for n in names}
