"""`clipforge serve` refuses to start, with one clear line and a non-zero exit, on a bad bundle or index."""

from pathlib import Path

import pytest

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

    from clipforge.encoders.bundle import load_bundle, save_bundle
    from clipforge.encoders.model import build_model, resolve_model_config
    from clipforge.index import Index

    torch.manual_seed(123)
    arch, cfg = resolve_model_config("cf-micro-vit")
    save_bundle(build_model(cfg), tmp_path / "other", arch=arch, model_cfg=cfg)
    Index.build(load_bundle(tmp_path / "other"), synth_data["val"], tmp_path / "idx", progress=False)
    assert serve("--bundle", str(micro_bundle), "--index", str(tmp_path / "idx")) == 1
    assert "built with another bundle" in capsys.readouterr().err


def test_corrupt_index_or_weights_are_one_line_errors(
    micro_bundle: Path, synth_data: dict, tmp_path: Path, capsys
) -> None:
    """Found before uvicorn starts (its lifespan failure would print a traceback and exit 3)."""
    import shutil

    from clipforge.encoders.bundle import load_bundle
    from clipforge.index import Index
    from clipforge.index.versions import read_manifest

    Index.build(load_bundle(micro_bundle), synth_data["val"], tmp_path / "idx", progress=False).close()
    meta = tmp_path / "idx" / read_manifest(tmp_path / "idx")["version_dir"] / "meta.sqlite"
    meta.write_bytes(b"\x00garbage" * (meta.stat().st_size // 8) + b"\x00" * (meta.stat().st_size % 8))  # same size
    assert serve("--bundle", str(micro_bundle), "--index", str(tmp_path / "idx")) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "meta.sqlite" in err, err

    bundle = tmp_path / "bundle"
    shutil.copytree(micro_bundle, bundle)
    weights = bundle / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert serve("--bundle", str(bundle)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "weights_sha256" in err, err
    (bundle / "bundle.json").write_text("[1]")
    assert serve("--bundle", str(bundle)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unsupported bundle format" in err, err


def test_the_main_jobs_serve_step_has_every_serve_setting(tmp_path: Path) -> None:
    """`clipforge quickstart` (make demo) ends by serving: it built serve's arguments by hand and lost a flag
    added later (`--workers`: AttributeError after training). It now calls `serve` with a Settings, where every
    setting has its default; a missing bundle shows that `serve` got as far as its preflight."""
    import pytest

    from clipforge.cli import quickstart_settings
    from clipforge.service.cli import serve
    from clipforge.service.settings import Settings

    settings = quickstart_settings(Settings(host="127.0.0.1", port=1), tmp_path / "nope", tmp_path / "idx")
    assert settings.workers == 1
    with pytest.raises(ValueError, match="not a clipforge bundle"):
        serve(settings, log_level="warning", access_log=False)


def test_a_bad_flag_value_is_one_line_naming_the_flag(micro_bundle: Path, capsys, monkeypatch) -> None:
    """pydantic's report was four lines, naming the field, not the flag."""
    from clipforge.cli import main

    assert main(["serve", "--bundle", str(micro_bundle), "--port", "70000"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clipforge: error: --port: ") and "70000" in err, err
    monkeypatch.setenv("CLIPFORGE_MAX_K", "-3")
    assert main(["serve", "--bundle", str(micro_bundle)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CLIPFORGE_MAX_K: " in err, err


def test_a_bad_setting_is_named_by_its_flag() -> None:
    """The `heads` setting is given as the repeatable flag --head: the message names what the user typed."""
    from clipforge.service.cli import settings_or_one_line
    from clipforge.service.settings import Settings

    with pytest.raises(ValueError, match=r"^--head: ") as info:
        settings_or_one_line(Settings, {"heads": 5})
    assert "\n" not in str(info.value)


def test_a_port_in_use_is_one_line_before_the_model_loads(micro_bundle: Path, capsys) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--bundle", str(micro_bundle), "--port", str(port), "--log-level", "critical"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err, err


def test_an_empty_index_or_bundle_variable_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Docker image sets CLIPFORGE_INDEX=/models/index; `-e CLIPFORGE_INDEX=` must switch the index off,
    not point it at the working directory (Path("") is ".")."""
    from clipforge.service.settings import Settings

    monkeypatch.setenv("CLIPFORGE_INDEX", "")
    monkeypatch.setenv("CLIPFORGE_BUNDLE", "  ")
    assert Settings().index is None and Settings().bundle is None
    monkeypatch.setenv("CLIPFORGE_INDEX", "/models/index")
    assert Settings().index == Path("/models/index")
