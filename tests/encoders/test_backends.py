"""The encoder interface: torch and ONNX Runtime implementations chosen in `load_bundle`."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from open_clip.model import CLIP

from clipforge.encoders.backends import Encoder, OnnxEncoder, TorchEncoder
from clipforge.encoders.bundle import BundleError, load_bundle
from clipforge.encoders.convert import export_onnx

pytest.importorskip("onnxruntime")
TEXTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def onnx_bundle(micro_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "b"
    shutil.copytree(micro_bundle, out)
    export_onnx(out)
    return out


def test_loading_on_onnx_runtime_builds_no_torch_model(onnx_bundle, monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("a torch CLIP model was built while loading for ONNX Runtime")

    monkeypatch.setattr(CLIP, "__init__", refuse)
    for backend in ("onnx", "auto"):
        b = load_bundle(onnx_bundle, device="cpu", backend=backend)
        assert b.backend == "onnx" and isinstance(b.encoder, OnnxEncoder) and isinstance(b.encoder, Encoder)
        assert b.encode_texts(TEXTS).shape == (2, 32) and b.encode_images(torch.zeros(1, 3, 32, 32)).shape == (1, 32)
        meta = json.loads((onnx_bundle / "bundle.json").read_text())
        assert b.logit_scale() == pytest.approx(min(meta["logit_scale"], 100.0))  # from bundle.json, no model


def test_both_backends_give_the_same_features_and_logit_scale(onnx_bundle):
    t = load_bundle(onnx_bundle, device="cpu", backend="torch")
    o = load_bundle(onnx_bundle, device="cpu", backend="onnx")
    assert isinstance(t.encoder, TorchEncoder) and t.logit_scale() == pytest.approx(t.encoder.logit_scale())
    assert t.logit_scale() == o.logit_scale()
    np.testing.assert_allclose(o.encode_texts(TEXTS).numpy(), t.encode_texts(TEXTS).numpy(), atol=1e-4)
    # the torch model is still there for what needs it (export, conversion), built on first use
    torch.testing.assert_close(o.model.state_dict()["logit_scale"], t.model.state_dict()["logit_scale"])


def test_a_corrupt_graph_falls_back_to_torch_under_auto_and_fails_in_one_line_when_forced(onnx_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(onnx_bundle, bundle)
    graph = bundle / "onnx" / "text_encoder.onnx"
    graph.write_bytes(b"\x08\x07garbage" + graph.read_bytes()[1000:2000])
    with pytest.warns(RuntimeWarning, match="cannot load the ONNX graphs.*using the torch weights"):
        b = load_bundle(bundle, device="cpu", backend="auto")
    assert b.backend == "torch"
    ref = load_bundle(onnx_bundle, device="cpu", backend="torch").encode_texts(TEXTS)
    torch.testing.assert_close(b.encode_texts(TEXTS), ref)
    with pytest.raises(BundleError, match="cannot load the ONNX graphs") as err, warnings.catch_warnings():
        warnings.simplefilter("error")
        load_bundle(bundle, device="cpu", backend="onnx")
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_swapped_graphs_are_found_at_load_and_fall_back_under_auto(onnx_bundle, tmp_path):
    """Two valid graphs in each other's place loaded, and every request then failed inside ONNX Runtime."""
    bundle = tmp_path / "b"
    shutil.copytree(onnx_bundle, bundle)
    image, text = bundle / "onnx" / "image_encoder.onnx", bundle / "onnx" / "text_encoder.onnx"
    image_bytes = image.read_bytes()
    image.write_bytes(text.read_bytes())
    text.write_bytes(image_bytes)
    with pytest.warns(RuntimeWarning, match="expected one input 'pixel_values'"):
        b = load_bundle(bundle, device="cpu", backend="auto")
    assert b.backend == "torch" and b.encode_texts(TEXTS).shape == (2, 32)
    with pytest.raises(BundleError, match="expected one input"):
        load_bundle(bundle, device="cpu", backend="onnx")


def test_onnx_runtime_takes_as_many_threads_as_torch_is_set_to(onnx_bundle):
    """A server that limits torch's threads (CLIPFORGE_TORCH_THREADS, or --workers sharing the cores) must
    limit ONNX Runtime's pool too: its own default takes every core from the event loop."""
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            enc = load_bundle(onnx_bundle, device="cpu", backend="onnx").encoder
            assert isinstance(enc, OnnxEncoder)
            assert enc.image.get_session_options().intra_op_num_threads == n
            assert enc.text.get_session_options().intra_op_num_threads == n
    finally:
        torch.set_num_threads(before)
