"""The import structure of the `clipforge` package, read from the source (nothing is imported): no import
cycles between modules, routers stay independent, and no module reaches into another package's privates.

Every import counts, also those inside functions or under `if TYPE_CHECKING:`: a deferred import hides
a cycle from the interpreter, not from the reader.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "clipforge"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(name: str) -> list[tuple[str, str | None]]:
    """(imported clipforge module, imported name or None) for every import statement in module `name`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names if alias.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base not in MODULES:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub, None) if sub in MODULES else (base, alias.name))
    return out


def graph() -> dict[str, set[str]]:
    return {name: {target for target, _ in imports(name) if target != name} for name in MODULES}


def test_the_scan_sees_the_package():
    g = graph()
    assert "clipforge.index.core" in g and "clipforge.service.app" in g
    assert "clipforge.index.types" in g["clipforge.index.core"]  # imports are found and resolved


def test_no_import_cycle_between_modules():
    g = graph()
    try:
        graphlib.TopologicalSorter(g).prepare()
    except graphlib.CycleError as exn:
        pytest.fail(f"import cycle: {' -> '.join(exn.args[1])}")


def test_routers_import_no_other_router():
    routers = {m for m in MODULES if m.startswith("clipforge.service.routers.")}
    bad = [f"{m} imports {t}" for m in sorted(routers) for t, _ in imports(m) if t in routers and t != m]
    assert not bad, "; ".join(bad)


def test_no_private_name_imported_from_another_package():
    bad = []
    for m in sorted(MODULES):
        package = m if MODULES[m].name == "__init__.py" else m.rpartition(".")[0]
        for target, name in imports(m):
            target_package = target if MODULES[target].name == "__init__.py" else target.rpartition(".")[0]
            private = name is not None and name.startswith("_") and not name.startswith("__")
            if private and target_package != package:
                bad.append(f"{m} imports {target}.{name}")
    assert not bad, "; ".join(bad)


# Dependencies point one way: training, index and service use the encoders; the service uses the index and the
# fusion heads; nothing imports the service; neither the index nor the service imports training; the fusion
# stage takes the synthetic data generator from training, never the trainer itself.
FORBIDDEN = {
    "clipforge.encoders": ("clipforge.training", "clipforge.index", "clipforge.service", "clipforge.fusion"),
    "clipforge.data": ("clipforge.training", "clipforge.index", "clipforge.service", "clipforge.fusion"),
    "clipforge.index": ("clipforge.training", "clipforge.service", "clipforge.fusion"),
    "clipforge.training": ("clipforge.service", "clipforge.index", "clipforge.fusion"),
    "clipforge.fusion": (
        "clipforge.service",
        "clipforge.training.loop",
        "clipforge.training.step",
        "clipforge.training.setup",
        "clipforge.training.state",
    ),
    "clipforge.service": ("clipforge.training",),
}


def test_dependencies_point_one_way():
    bad = [
        f"{m} imports {t}"
        for m, ts in graph().items()
        for src, banned in FORBIDDEN.items()
        if m.startswith(src)
        for t in sorted(ts)
        if t.startswith(banned)
    ]
    assert not bad, "; ".join(bad)
