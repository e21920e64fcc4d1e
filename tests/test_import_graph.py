"""The seams between relay's modules: which module may import which (read from the source).

Dependencies point down (DESIGN.md §2).  These checks keep the config parsers free of a
cycle and the metrics layer free of socket code, without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RELAY = ROOT / "relay"


def relay_imports(path: Path, *, nested: bool = True) -> set[str]:
    """The `relay.*` modules a source file imports (top level, and inside functions too
    when `nested`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = ast.walk(tree) if nested else iter(tree.body)
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("relay"):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("relay"))
    return out


def module_path(name: str) -> Path:
    p = ROOT / Path(*name.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


def test_the_config_reader_is_a_leaf() -> None:
    assert relay_imports(module_path("relay.configreader")) == {"relay.errors"}


def test_signaling_config_imports_only_the_reader_and_errors() -> None:
    assert relay_imports(module_path("relay.signaling.config")) == {
        "relay.configreader", "relay.errors"}


def test_config_imports_its_sections_at_top_level() -> None:
    path = module_path("relay.config")
    assert "relay.signaling.config" in relay_imports(path, nested=False)
    assert relay_imports(path) == relay_imports(path, nested=False)  # nothing hidden


@pytest.mark.parametrize("module", ["relay.config", "relay.configreader",
                                    "relay.signaling.config"])
def test_config_modules_form_no_cycle(module: str) -> None:
    seen: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join((*trail, name))
        if name in seen:
            return
        seen.add(name)
        for dep in relay_imports(module_path(name)):
            if dep in ("relay",):
                continue
            visit(dep, (*trail, name))

    visit(module, ())



def test_metrics_never_imports_the_network_layer() -> None:
    for path in sorted((RELAY / "metrics").glob("*.py")):
        bad = {m for m in relay_imports(path) if m == "relay.net" or m.startswith("relay.net.")}
        assert not bad, f"{path.name} imports {sorted(bad)}"
