"""The encoder interface and its two implementations: PyTorch (the open_clip model) and ONNX Runtime (CPU).

`Encoder` is all that evaluation, the index and the service need from a model: batches in, L2-normalised fp32
features [N, D] out. `load_bundle` picks an implementation from `BACKENDS`; the model being trained is wrapped
in a `TorchEncoder` directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from clipforge.encoders.device import autocast
from clipforge.encoders.model import MAX_LOGIT_SCALE
from clipforge.encoders.tokenizer import Tokenizer


@runtime_checkable
class Encoder(Protocol):
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] normalised pixels -> L2-normalised fp32 features [N, D] on the CPU."""
        ...

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """N strings -> L2-normalised fp32 features [N, D] on the CPU."""
        ...


class TorchEncoder:
    """An open_clip model (a bundle's, or the one being trained) under autocast at `precision`."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, device: torch.device, precision: str) -> None:
        self.model, self.tokenizer, self.device, self.precision = model, tokenizer, device, precision

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            image_features = self.model.encode_image(pixels.to(self.device), normalize=True)  # type: ignore[operator]
        return torch.nn.functional.normalize(image_features.float(), dim=-1).cpu()  # [N, D]

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)  # [N, context_length]
        with autocast(self.device, self.precision):
            text_features = self.model.encode_text(tokens, normalize=True)  # type: ignore[operator]
        return torch.nn.functional.normalize(text_features.float(), dim=-1).cpu()  # [N, D]

    def logit_scale(self) -> float:
        """The model's current temperature, as the loss applies it (exp, clamped)."""
        return float(self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE).item())  # type: ignore[operator]


class OnnxEncoder:
    """The graphs `clipforge bundle export --onnx` wrote, run by ONNX Runtime on the CPU (fp32)."""

    def __init__(self, directory: str | Path, tokenizer: Tokenizer, fingerprint: str, threads: int = 0) -> None:
        import onnxruntime as ort

        directory = Path(directory)
        info = json.loads((directory / "onnx.json").read_text())
        if not isinstance(info, dict) or info.get("weights_sha256") != fingerprint:
            raise ValueError(f"{directory}: ONNX graphs were exported from other weights than this bundle's")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.tokenizer = tokenizer
        self.image = ort.InferenceSession(str(directory / "image_encoder.onnx"), opts, providers=providers)
        self.text = ort.InferenceSession(str(directory / "text_encoder.onnx"), opts, providers=providers)
        for session, name, want in (
            (self.image, "image_encoder.onnx", "pixel_values"),
            (self.text, "text_encoder.onnx", "input_ids"),
        ):
            got = [i.name for i in session.get_inputs()]
            if got != [want]:  # e.g. the two files swapped: found now, not at the first request
                raise ValueError(f"{directory / name}: expected one input {want!r}, the graph takes {got}")

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.image.run(None, {"pixel_values": pixels.float().numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = self.text.run(None, {"input_ids": self.tokenizer(texts).long().numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
