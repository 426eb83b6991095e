"""The arrows point one way: media never imports gateway, and nothing in media imports pjsua2."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MEDIA = Path(__file__).resolve().parents[2] / "media"
FORBIDDEN = {"gateway", "pjsua2"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    "path", sorted(MEDIA.rglob("*.py")), ids=lambda p: str(p.relative_to(MEDIA))
)
def test_media_module_imports_neither_gateway_nor_pjsua2(path: Path) -> None:
    assert not imported_roots(path) & FORBIDDEN
