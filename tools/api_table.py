"""Rewrite the route table at the end of docs/api.md from the application's route table.

.venv/bin/python tools/api_table.py      (tests/test_docs.py checks the table stays true)
"""

from __future__ import annotations

from pathlib import Path

from fastapi.dependencies.models import Dependant

from corral.auth.dependencies import Authenticated, Public, Require
from corral.config import Settings
from corral.kit.routes import api_routes
from corral.main import create_app

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
HEADER = "| method | path | permission | what it does |\n|---|---|---|---|\n"


def guard_of(dependant: Dependant) -> object:
    stack = [dependant]
    while stack:
        current = stack.pop()
        if isinstance(current.call, Require | Authenticated | Public):
            return current.call
        stack.extend(current.dependencies)
    return None


def rows() -> list[str]:
    app = create_app(Settings(secret_key="api-table-" + "t" * 40))
    out = []
    for info in api_routes(app):
        if not (info.path.startswith("/api/") or info.path in {"/healthz", "/readyz", "/metrics"}):
            continue
        guard = guard_of(info.route.dependant)
        if isinstance(guard, Require):
            permission = (" or " if guard.any_of else ", ").join(f"`{p.value}`" for p in guard.permissions)
        elif isinstance(guard, Authenticated):
            permission = "anyone signed in (self-service)"
        elif isinstance(guard, Public):
            permission = "public"
        else:
            raise SystemExit(f"{info.path} has no guard")
        summary = (info.route.endpoint.__doc__ or info.route.name.replace("_", " ")).strip().splitlines()[0]
        out.extend(
            f"| `{method}` | `{info.path}` | {permission} | {summary} |" for method in sorted(info.methods)
        )
    return out


def main() -> None:
    text = DOC.read_text()
    head = text[: text.index(HEADER)]
    DOC.write_text(head + HEADER + "\n".join(rows()) + "\n")


if __name__ == "__main__":
    main()
