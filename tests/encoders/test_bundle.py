import json
import subprocess
import sys

import open_clip
import pytest
import torch
from PIL import Image

from clipforge.encoders.bundle import BundleError, load_bundle, save_bundle
from clipforge.encoders.model import CONFIG_DIR, build_model, resolve_model_config


def test_resolve_shipped_and_open_clip_names():
    assert resolve_model_config("cf-tiny-vit")[1]["embed_dim"] == 128
    assert resolve_model_config("RN50")[1]["vision_cfg"]["layers"] == [3, 4, 6, 3]
    with pytest.raises(ValueError, match="unknown architecture"):
        resolve_model_config("no-such-model")


def test_bundle_round_trip_and_fingerprint(micro_bundle):
    meta = json.loads((micro_bundle / "bundle.json").read_text())
    assert meta["format"] == "clipforge-bundle/1"
    assert meta["tokenizer"] == {"name": "clip-bpe", "context_length": 12}
    assert abs(meta["logit_scale"] - 1 / 0.07) < 1e-3
    b = load_bundle(micro_bundle, device="cpu")
    assert b.fingerprint == meta["weights_sha256"]
    feats = b.encode_texts(["a red circle", "a blue square"])
    assert feats.shape == (2, 32)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_tampered_weights_are_refused(micro_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(micro_bundle, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not a clipforge bundle"):
        load_bundle(tmp_path / "missing")


def test_exported_bundle_matches_in_fresh_process_and_in_plain_open_clip(tmp_path):
    torch.manual_seed(3)
    arch, cfg = resolve_model_config("cf-micro-vit")
    model = build_model(cfg).eval()
    save_bundle(model, tmp_path / "b", arch=arch, model_cfg=cfg)
    pixels = torch.randn(2, 3, 32, 32)
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=12)(["a red circle", "a green ring"])
    with torch.no_grad():
        ref_img = model.encode_image(pixels, normalize=True)
        ref_txt = model.encode_text(tokens, normalize=True)
    torch.save({"pixels": pixels, "tokens": tokens}, tmp_path / "inputs.pt")

    # 1) a fresh Python process loading the bundle with clipforge
    script = f"""
import torch
from clipforge.encoders.bundle import load_bundle
b = load_bundle({str(tmp_path / "b")!r}, device='cpu', precision='fp32')
x = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
with torch.no_grad():
    out = {{'img': b.model.encode_image(x['pixels'], normalize=True), 'txt': b.model.encode_text(x['tokens'], normalize=True)}}
torch.save(out, {str(tmp_path / "out.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.testing.assert_close(out["img"], ref_img, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["txt"], ref_txt, atol=1e-6, rtol=0)

    # 2) plain open_clip: register the config, create the model, load our safetensors
    from safetensors.torch import load_file

    open_clip.add_model_config(CONFIG_DIR / "cf-micro-vit.json")
    plain = open_clip.create_model("cf-micro-vit").eval()
    plain.load_state_dict(load_file(str(tmp_path / "b" / "model.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_image(pixels, normalize=True), ref_img, atol=1e-6, rtol=0)
        torch.testing.assert_close(plain.encode_text(tokens, normalize=True), ref_txt, atol=1e-6, rtol=0)


def test_bundle_preprocess_matches_image_size(micro_bundle):
    b = load_bundle(micro_bundle)
    px = b.preprocess([Image.new("RGB", (100, 60), (255, 0, 0))])
    assert px.shape == (1, 3, 32, 32)


def test_bundle_directory_is_readable_by_others(micro_bundle):
    import stat

    assert micro_bundle.stat().st_mode & stat.S_IROTH and micro_bundle.stat().st_mode & stat.S_IXOTH
    for f in micro_bundle.iterdir():
        assert f.stat().st_mode & stat.S_IROTH, f


def test_cpu_inference_is_fp32_so_an_embedding_does_not_depend_on_its_batch(micro_bundle, monkeypatch):
    """`precision="auto"` on CPU: training may pick bf16 where it is fast, a loaded bundle never does. Under bf16
    autocast the same image embedded alone and inside a batch of 64 differed by ~1e-3 (an index then did not
    hold the vector `encode_images` gives for that image)."""
    from clipforge.encoders import device

    monkeypatch.setattr(device, "cpu_bf16_is_fast", lambda: True)  # as on an AMX / AVX512-BF16 CPU
    assert device.resolve_precision("auto", torch.device("cpu")) == "bf16"
    b = load_bundle(micro_bundle, device="cpu", backend="torch")
    assert b.precision == "fp32"
    torch.manual_seed(0)
    pixels = torch.randn(64, 3, 32, 32)
    torch.testing.assert_close(b.encode_images(pixels[:1])[0], b.encode_images(pixels)[0], atol=1e-5, rtol=0)
