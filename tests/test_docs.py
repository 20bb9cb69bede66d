"""docs/ stays true: every API route is documented with the permission it really requires."""

from __future__ import annotations

from pathlib import Path

from fastapi.dependencies.models import Dependant

from corral.auth.dependencies import Authenticated, Public, Require
from corral.config import Settings
from corral.kit.routes import api_routes
from corral.main import create_app

DOCS = Path(__file__).resolve().parents[1] / "docs"


def guard_of(dependant: Dependant) -> object:
    stack = [dependant]
    while stack:
        current = stack.pop()
        if isinstance(current.call, Require | Authenticated | Public):
            return current.call
        stack.extend(current.dependencies)
    return None


def test_api_md_lists_every_api_route_with_its_permission() -> None:
    text = (DOCS / "api.md").read_text()
    rows = {line for line in text.splitlines() if line.startswith("| `")}
    app = create_app(Settings(secret_key="docs-test-" + "d" * 40))
    missing = []
    for info in api_routes(app):
        if not (info.path.startswith("/api/") or info.path in {"/healthz", "/readyz", "/metrics"}):
            continue
        guard = guard_of(info.route.dependant)
        for method in info.methods:
            prefix = f"| `{method}` | `{info.path}` | "
            row = next((r for r in rows if r.startswith(prefix)), None)
            if row is None:
                missing.append(f"{method} {info.path}")
                continue
            if isinstance(guard, Require):
                for permission in guard.permissions:
                    wrong = f"{method} {info.path}: docs name the wrong permission"
                    assert f"`{permission.value}`" in row, wrong
    assert not missing, f"docs/api.md does not list: {missing}"
