"""The distribution installs one top-level import package, `clipforge`, with its data files, and works from
outside the checkout (a top-level `index` or `service` would collide with other projects in site-packages)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_holds_only_clipforge_and_imports_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "clipforge", src / "clipforge", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("clipforge-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        top_level = next(z.read(n).decode() for n in names if n.endswith(".dist-info/top_level.txt"))
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"clipforge"}
    assert top_level.split() == ["clipforge"]
    # every data file the code reads at run time (presets, model configs, the web page) is in the wheel
    data = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "clipforge").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc", ".md")
    }
    assert data and data <= names, sorted(data - names)

    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "clipforge"]
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    check = (
        "import clipforge, clipforge.cli, clipforge.service.app, clipforge.index, clipforge.training.loop\n"
        "from clipforge.training.config import load_config\n"
        "from clipforge.encoders.model import resolve_model_config\n"
        f"assert clipforge.__file__.startswith({str(target)!r}), clipforge.__file__\n"
        "assert load_config('cpu-small').model.arch\n"
        "resolve_model_config('cf-tiny-vit')\n"
        "print('ok')\n"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", check], cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
