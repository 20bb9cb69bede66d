"""docs/ stays true: every API route is documented with the permission it really requires."""

from __future__ import annotations

from pathlib import Path

from tools.api_table import DOC, rows


def test_api_md_lists_every_api_route_with_its_permission() -> None:
    documented = {line for line in DOC.read_text().splitlines() if line.startswith("| `")}
    missing = [row for row in rows() if row not in documented]
    assert not missing, f"docs/api.md is out of date (run tools/api_table.py): {missing}"


def test_no_file_keeps_merge_conflict_markers() -> None:
    """A merge resolved by hand can leave its markers in a document no test reads (it happened to api.md)."""
    root = DOC.parents[1]
    markers = ("<<<<<<< ", ">>>>>>> ", "=======\n")
    found = []
    for top in ("docs", "src", "tests", "templates", "static", "migrations", "agent", "bench", "tools"):
        for path in (root / top).rglob("*"):
            if (
                "node_modules" not in path.parts
                and path.is_file()
                and path.suffix in {".md", ".py", ".html", ".css", ".js", ".yaml", ".toml"}
            ):
                lines = path.read_text(errors="replace").splitlines(keepends=True)
                found += [
                    f"{path.relative_to(root)}:{n}"
                    for n, line in enumerate(lines, 1)
                    if line.startswith(markers)
                ]
    assert not found, f"merge conflict markers left in: {found}"


def test_policies_md_documents_every_catalog_setting() -> None:
    """The settings catalogs are data; docs/policies.md names every setting of both (and its mapping)."""
    from corral.compliance import catalog as compliance_catalog
    from corral.profiles import catalog as profiles_catalog

    text = (Path(__file__).resolve().parents[1] / "docs" / "policies.md").read_text(encoding="utf-8")
    ids = [s.id for s in profiles_catalog.load().settings] + [s.id for s in compliance_catalog.SETTINGS]
    missing = [i for i in ids if f"`{i}`" not in text]
    assert not missing, f"docs/policies.md does not document {missing}"
