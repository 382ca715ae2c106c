"""ONNX Runtime encoders for a bundle (graphs written by `clipforge bundle export --onnx`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class OnnxEncoders:
    """encode_images / encode_texts through onnxruntime; outputs L2-normalised fp32 tensors like the torch path."""

    def __init__(self, directory: str | Path, fingerprint: str, threads: int = 0) -> None:
        import onnxruntime as ort

        directory = Path(directory)
        info = json.loads((directory / "onnx.json").read_text())
        if info.get("weights_sha256") != fingerprint:
            raise ValueError(f"{directory}: ONNX graphs were exported from other weights than this bundle's")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.image = ort.InferenceSession(str(directory / "image_encoder.onnx"), opts, providers=providers)
        self.text = ort.InferenceSession(str(directory / "text_encoder.onnx"), opts, providers=providers)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.image.run(None, {"pixel_values": pixels.float().numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def encode_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.text.run(None, {"input_ids": tokens.long().numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
