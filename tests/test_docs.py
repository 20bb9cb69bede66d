"""docs/ stays true: every API route is documented with the permission it really requires."""

from __future__ import annotations

from tools.api_table import DOC, rows


def test_api_md_lists_every_api_route_with_its_permission() -> None:
    documented = {line for line in DOC.read_text().splitlines() if line.startswith("| `")}
    missing = [row for row in rows() if row not in documented]
    assert not missing, f"docs/api.md is out of date (run tools/api_table.py): {missing}"
