"""Dependencies point down: the codec and the TURN core never import the layers above them.

`relay.stun` imports nothing of ours but itself; `relay.turn` only `relay.stun`, itself and
the leaf modules (`relay.config`, `relay.errors`, `relay.histogram`); the leaf
`relay.histogram` nothing of ours.  Read from the source (imports under TYPE_CHECKING count
too), so an upward import fails here before it becomes a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parents[2] / "relay"
LEAVES = {"relay.config", "relay.errors", "relay.histogram"}
ALLOWED = {
    "stun": {"relay.stun"},
    "turn": {"relay.stun", "relay.turn"} | LEAVES,
}


def relay_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "relay" or n.startswith("relay."))
    return found


def allowed(module: str, prefixes: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_downwards(package: str) -> None:
    files = sorted((RELAY / package).glob("*.py"))
    assert files
    upward = {
        f"{f.name} imports {m}"
        for f in files
        for m in relay_imports(f)
        if not allowed(m, ALLOWED[package])
    }
    assert upward == set()


def test_histogram_is_a_leaf() -> None:
    assert relay_imports(RELAY / "histogram.py") == set()


def test_the_stream_connections_do_not_import_the_gateway() -> None:
    assert "relay.net.gateway" not in relay_imports(RELAY / "net" / "stream.py")
    assert "relay.net.gateway" not in relay_imports(RELAY / "net" / "forward.py")
