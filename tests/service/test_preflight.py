"""`clipforge serve` refuses to start, with one clear line and a non-zero exit, on a bad bundle or index."""

from pathlib import Path

from clipforge.cli import main


def serve(*args: str) -> int:
    return main(["serve", *args, "--port", "1"])  # never reached: preflight fails first


def test_missing_bundle_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert serve("--bundle", str(tmp_path / "nope")) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a clipforge bundle" in err


def test_missing_index_is_one_line_error(micro_bundle: Path, tmp_path: Path, capsys) -> None:
    assert serve("--bundle", str(micro_bundle), "--index", str(tmp_path / "none")) == 1
    assert "no index directory" in capsys.readouterr().err


def test_index_of_another_bundle_is_refused(micro_bundle: Path, synth_data: dict, tmp_path: Path, capsys) -> None:
    import torch

    from encoders.bundle import load_bundle, save_bundle
    from encoders.model import build_model, resolve_model_config
    from index import Index

    torch.manual_seed(123)
    arch, cfg = resolve_model_config("cf-micro-vit")
    save_bundle(build_model(cfg), tmp_path / "other", arch=arch, model_cfg=cfg)
    Index.build(load_bundle(tmp_path / "other"), synth_data["val"], tmp_path / "idx", progress=False)
    assert serve("--bundle", str(micro_bundle), "--index", str(tmp_path / "idx")) == 1
    assert "built with another bundle" in capsys.readouterr().err
