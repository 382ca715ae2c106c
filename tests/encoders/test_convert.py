"""Issue: real pretrained models in and out. Every model here is random-init and made by the test, offline."""

import json
import sys

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipforge.encoders.bundle import load_bundle
from clipforge.encoders.convert import export_onnx, export_open_clip, import_hf_clip, import_open_clip
from clipforge.encoders.model import CONFIG_DIR, weights_format

LABELS = ["a red circle", "a blue square", "a green ring", "a big orange cross"]


def images(n=3, size=32):
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


@pytest.mark.parametrize("arch, fmt", [("cf-micro-vit", "bin"), ("cf-tiny-rn", "safetensors")])
def test_open_clip_checkpoint_imports_with_identical_embeddings(tmp_path, arch, fmt):
    open_clip.add_model_config(CONFIG_DIR / f"{arch}.json")
    torch.manual_seed(1)
    ref, _, preprocess = open_clip.create_model_and_transforms(arch)
    ref.eval()
    weights = tmp_path / f"weights.{fmt}"
    if fmt == "bin":
        torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, weights)  # DDP-style
    else:
        from safetensors.torch import save_file

        save_file(ref.state_dict(), str(weights))
    import_open_clip(arch, weights, tmp_path / "bundle")
    b = load_bundle(tmp_path / "bundle", precision="fp32")
    tok = open_clip.get_tokenizer(arch)
    pix = torch.stack([preprocess(im) for im in images(size=64)])
    with torch.no_grad():
        ref_img = ref.encode_image(pix, normalize=True)
        ref_txt = ref.encode_text(tok(LABELS), normalize=True)
    ours_img = b.encode_images(b.preprocess(images(size=64)))
    ours_txt = b.encode_texts(LABELS)
    torch.testing.assert_close(ours_img, ref_img, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_txt, ref_txt, atol=1e-4, rtol=0)
    assert torch.equal((ours_img @ ours_txt.T).argsort(dim=1), (ref_img @ ref_txt.T).argsort(dim=1))


def test_wrong_weights_are_a_clear_error(tmp_path, micro_bundle):
    torch.save({"not": torch.zeros(3)}, tmp_path / "w.bin")
    with pytest.raises(ValueError, match="does not fit"):
        import_open_clip("cf-micro-vit", tmp_path / "w.bin", tmp_path / "b")
    (tmp_path / "bad.bin").write_bytes(b"garbage")  # torch.load's own error for it: KeyError: 'g'
    with pytest.raises(ValueError, match="bad.bin is neither a safetensors nor a PyTorch weights file"):
        import_open_clip("cf-micro-vit", tmp_path / "bad.bin", tmp_path / "b")
    (tmp_path / "torn.bin").write_bytes((tmp_path / "w.bin").read_bytes()[:100])  # a torch file, cut short
    with pytest.raises(ValueError, match="cannot read .*torn.bin as a state dict"):
        import_open_clip("cf-micro-vit", tmp_path / "torn.bin", tmp_path / "b")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    assert weights_format(tmp_path / "w.safetensors") == "safetensors" and weights_format(tmp_path / "w.bin") == "torch"


def tiny_hf_clip(directory):
    """A random-init transformers CLIP model and a byte-level BPE tokenizer written offline."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    merges = ["r e", "re d</w>", "c i", "ci r", "b l", "bl u"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # the highest id, as in CLIP: argmax pooling finds it
    directory.mkdir(parents=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    tok.save_pretrained(directory)
    eot = vocab["<|endoftext|>"]
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=eot - 1,
            eos_token_id=eot,
            pad_token_id=eot,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=24,
    )
    torch.manual_seed(2)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(directory)
    return model, tok


def projected(out):
    """transformers < 5 returns the projected features, 5.x an output whose pooler_output holds them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_hugging_face_clip_imports_with_identical_embeddings(tmp_path):
    hf, tok = tiny_hf_clip(tmp_path / "hf")
    import_hf_clip(tmp_path / "hf", tmp_path / "bundle")
    b = load_bundle(tmp_path / "bundle", precision="fp32")
    tokens = tok(LABELS, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(b.tokenizer(LABELS), tokens)  # the bundle carries the model's own tokenizer
    pix = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_img = torch.nn.functional.normalize(projected(hf.get_image_features(pixel_values=pix)), dim=-1)
        ref_txt = torch.nn.functional.normalize(projected(hf.get_text_features(input_ids=tokens)), dim=-1)
    ours_img, ours_txt = b.encode_images(pix), b.encode_texts(LABELS)
    torch.testing.assert_close(ours_img, ref_img, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_txt, ref_txt, atol=1e-4, rtol=0)
    assert torch.equal((ours_img @ ours_txt.T).argsort(dim=1), (ref_img @ ref_txt.T).argsort(dim=1))
    assert b.logit_scale() == pytest.approx(float(hf.logit_scale.exp()), rel=1e-6)


def test_open_clip_export_loads_in_plain_open_clip(tmp_path, micro_bundle):
    out = export_open_clip(micro_bundle, tmp_path / "oc")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    model.eval()
    b = load_bundle(micro_bundle, precision="fp32")
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=12)
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_text(tok(LABELS), normalize=True), b.encode_texts(LABELS), atol=1e-6, rtol=0
        )
        pix = torch.stack([preprocess(im) for im in images()])
        torch.testing.assert_close(
            model.encode_image(pix, normalize=True), b.encode_images(b.preprocess(images())), atol=1e-6, rtol=0
        )


def test_onnx_graphs_match_pytorch_and_serve_as_a_backend(tmp_path, micro_bundle):
    import shutil

    import onnxruntime as ort

    bundle = tmp_path / "b"
    shutil.copytree(micro_bundle, bundle)
    out = export_onnx(bundle)
    torch_b = load_bundle(bundle, precision="fp32", backend="torch")
    sess = ort.InferenceSession(str(out / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # dynamic batch
        pix = torch.randn(n, 3, 32, 32)
        got = sess.run(None, {"pixel_values": pix.numpy()})[0]
        np.testing.assert_allclose(got, torch_b.encode_images(pix).numpy(), atol=1e-3)
    onnx_b = load_bundle(bundle, backend="onnx")
    assert onnx_b.backend == "onnx" and load_bundle(bundle, backend="auto").backend == "onnx"
    np.testing.assert_allclose(onnx_b.encode_texts(LABELS).numpy(), torch_b.encode_texts(LABELS).numpy(), atol=1e-3)
    # graphs exported from other weights are refused
    meta = json.loads((out / "onnx.json").read_text())
    (out / "onnx.json").write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="other weights"):
        load_bundle(bundle, backend="onnx")


def test_a_torn_onnx_export_is_repaired_by_exporting_again(tmp_path, micro_bundle):
    """A graph cut short (a kill -9 mid-export of the old in-place writer) made every load of the bundle
    fail, the re-export included; graphs are now written to a temporary directory and renamed, and the export
    reads the bundle's weights, not its graphs. A folder holding anything else is never replaced."""
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(micro_bundle, bundle)
    graphs = export_onnx(bundle)
    graph = graphs / "image_encoder.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    assert export_onnx(bundle) == graphs and sorted(p.name for p in graphs.iterdir()) == sorted(
        ["image_encoder.onnx", "text_encoder.onnx", "onnx.json"]
    )
    assert load_bundle(bundle, backend="onnx").encode_texts(["a red circle"]).shape[0] == 1
    assert not [p for p in bundle.iterdir() if p.name.startswith(".")]  # no temporary left behind
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "thesis.txt").write_text("x")
    with pytest.raises(ValueError, match="refusing"):
        export_onnx(bundle, keep)
    assert (keep / "thesis.txt").read_text() == "x"


def test_saving_a_bundle_never_replaces_other_files_or_keeps_nan_weights(tmp_path, micro_bundle):
    from clipforge.encoders.bundle import BundleError, save_bundle

    b = load_bundle(micro_bundle, backend="torch")
    meta = b.meta
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("x")
    with pytest.raises(BundleError, match="refusing"):
        save_bundle(b.model, mine, arch=meta["arch"], model_cfg=meta["model_cfg"])
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]
    (tmp_path / "file").write_text("y")
    with pytest.raises(BundleError, match="refusing"):
        save_bundle(b.model, tmp_path / "file", arch=meta["arch"], model_cfg=meta["model_cfg"])
    save_bundle(b.model, tmp_path / "again", arch=meta["arch"], model_cfg=meta["model_cfg"])
    save_bundle(b.model, tmp_path / "again", arch=meta["arch"], model_cfg=meta["model_cfg"])  # a bundle: replaced
    with torch.no_grad():
        next(b.model.parameters()).fill_(float("nan"))
    with pytest.raises(BundleError, match="NaN"):
        save_bundle(b.model, tmp_path / "nan", arch=meta["arch"], model_cfg=meta["model_cfg"])
    assert not (tmp_path / "nan").exists()


def _one_line_error(capsys, argv):
    from clipforge.cli import main

    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err  # transformers may draw a progress bar first
    lines = err.replace("\r", "\n").splitlines()
    assert rc == 1 and "Traceback" not in err and len(lines[-1]) < 600, err
    assert lines[-1].startswith("clipforge: error: ") and sum("clipforge" in ln for ln in lines) == 1, err
    return lines[-1]


def test_hf_weights_missing_half_their_keys_are_refused_by_name_and_count(tmp_path, capsys):
    """transformers initialises missing weights at random and only logs it: the import served a random model."""
    from safetensors.torch import load_file, save_file

    tiny_hf_clip(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(weights))
    kept = dict(sorted(state.items())[: len(state) // 2])
    save_file(kept, str(weights), metadata={"format": "pt"})
    err = _one_line_error(capsys, ["bundle", "import", "--hf", str(tmp_path / "hf"), str(tmp_path / "b")])
    assert f"{len(state) - len(kept)} missing (" in err and "and " in err, err
    assert not (tmp_path / "b").exists()


def test_bad_bundle_import_inputs_are_one_line(tmp_path, micro_bundle, capsys):
    tiny_hf_clip(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    err = _one_line_error(capsys, ["bundle", "import", "--hf", str(tmp_path / "hf"), str(tmp_path / "b")])
    assert "cannot load the transformers weights" in err
    (tmp_path / "hf" / "config.json").write_text("[1, 2]")
    assert "expected a JSON object, found a list" in _one_line_error(
        capsys, ["bundle", "import", "--hf", str(tmp_path / "hf"), str(tmp_path / "b")]
    )
    cut = tmp_path / "cut.safetensors"
    data = (micro_bundle / "model.safetensors").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    err = _one_line_error(
        capsys, ["bundle", "import", "--arch", "cf-micro-vit", "--weights", str(cut), str(tmp_path / "b2")]
    )
    assert "cannot read" in err


def test_weights_of_another_architecture_name_the_keys_with_counts(tmp_path, micro_bundle, capsys):
    """PyTorch's load_state_dict message lists every key (38 lines for these); one line with counts instead."""
    err = _one_line_error(
        capsys,
        [
            "bundle",
            "import",
            "--arch",
            "cf-tiny-vit",
            "--weights",
            str(micro_bundle / "model.safetensors"),
            str(tmp_path / "b"),
        ],
    )
    assert "does not fit the architecture" in err and "mis-shaped (" in err and " != " in err, err
    assert "missing (" in err or "unexpected (" in err, err


def test_bundle_info_shows_a_provenance_that_is_not_an_object(tmp_path, micro_bundle, capsys):
    import shutil

    from clipforge.cli import main

    shutil.copytree(micro_bundle, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    (tmp_path / "b" / "bundle.json").write_text(json.dumps({**meta, "provenance": "x"}))
    assert main(["bundle", "info", str(tmp_path / "b")]) == 0
    assert json.loads(capsys.readouterr().out)["provenance"] == "x"


def test_bundle_info_refuses_missing_or_edited_weights(tmp_path, micro_bundle, capsys):
    """`bundle info` printed the same healthy summary for a bundle whose weights were gone or truncated."""
    import shutil

    from clipforge.cli import main

    for name, damage in (("gone", lambda w: w.unlink()), ("cut", lambda w: w.write_bytes(w.read_bytes()[:1000]))):
        shutil.copytree(micro_bundle, tmp_path / name)
        damage(tmp_path / name / "model.safetensors")
        assert main(["bundle", "info", str(tmp_path / name)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "model.safetensors" in err, err


def test_hf_import_without_transformers_names_the_extra(tmp_path, capsys, monkeypatch):
    """transformers comes with the [hf] extra only: a [serve] install must get one line, not a traceback."""
    tiny_hf_clip(tmp_path / "hf")
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    err = _one_line_error(capsys, ["bundle", "import", "--hf", str(tmp_path / "hf"), str(tmp_path / "b")])
    assert "clipforge[hf]" in err
    assert not (tmp_path / "b").exists()
