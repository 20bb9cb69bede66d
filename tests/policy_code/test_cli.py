"""`corral policies`: the YAML it reads and writes, its errors, and how it shows a plan (the round trip
against a live server is in tests/push/test_policies_end_to_end.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from corral.cli import app
from corral.policy_code.cli import DocumentError, dump, load, report
from tests.live import free_port

DOCUMENT = {
    "version": 1,
    "filters": [{"name": "Kiosks", "platform": "linux", "rule": 'device.displayName -startsWith "kiosk"'}],
    "configuration_profiles": [
        {
            "name": "Banner",
            "platform": "linux",
            "settings": {"login_banner.text": "Authorised use only.\nAll activity is logged."},
        }
    ],
}


def test_dump_is_stable_block_yaml_that_loads_back() -> None:
    text = dump(DOCUMENT)
    assert text == dump(DOCUMENT)
    assert text.startswith("# Corral policy document")
    # Multi-line text as a literal block, keys in the document's order (not sorted).
    assert "    settings:\n      login_banner.text: |-\n        Authorised use only.\n        All" in text
    assert "\nfilters:\n  - name: Kiosks\n" in text
    assert text.index("\nversion:") < text.index("\nfilters:") < text.index("\nconfiguration_profiles:")
    assert load(text) == DOCUMENT


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    text = """
version: 1
configuration_profiles:
  - name: Wi-Fi
    platform: windows
    settings:
      wifi.networks:
        - {ssid: Corp, security: wpa2_personal, password: {$env: CORP_WIFI}}
"""
    monkeypatch.setenv("CORP_WIFI", "correct horse")
    network = load(text)["configuration_profiles"][0]["settings"]["wifi.networks"][0]
    assert network["password"] == "correct horse"
    monkeypatch.delenv("CORP_WIFI")
    with pytest.raises(
        DocumentError,
        match=r"configuration_profiles\.0\.settings\.wifi\.networks\.0\.password: "
        r"the environment variable 'CORP_WIFI' is not set",
    ):
        load(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\nfilters: [\n", "line 3, column 1: expected the node content"),
        ("a: &x [1, 2]\nb: *x\n", "line 2: YAML aliases (*name) are not allowed here"),
        ("- just a list\n", "the document is a mapping"),
        (
            "version: 1\nfilters:\n  - name: 2026-01-01\n",
            "filters.0.name: date values are not taken; quote it",
        ),
        ("version: !!python/object:os.system x\n", "could not determine a constructor"),
    ],
)
def test_files_that_cannot_be_a_document_are_refused_with_where(text: str, message: str) -> None:
    with pytest.raises(DocumentError) as caught:
        load(text)
    assert message in str(caught.value)


def test_the_plan_reads_like_a_diff() -> None:
    result = {
        "dry_run": True,
        "unchanged": 4,
        "changes": [
            {
                "kind": "compliance_policy",
                "name": "Linux disks",
                "action": "create",
                "fields": [
                    {"path": "platform", "old": None, "new": "linux"},
                    {"path": "settings.disk_encryption.required", "old": None, "new": True},
                    {"path": "assignments", "old": None, "new": ['include group "Fleet"']},
                ],
            },
            {
                "kind": "configuration_profile",
                "name": "Banner",
                "action": "update",
                "fields": [
                    {"path": "settings.login_banner.text", "old": "Hello", "new": "Welcome"},
                    {"path": "settings.ssh.password_authentication", "old": False, "new": None},
                ],
            },
            {"kind": "filter", "name": "Kiosks", "action": "delete", "fields": []},
        ],
    }
    assert report(result).splitlines() == [
        '+ compliance policy "Linux disks"',
        "    platform: linux",
        "    settings.disk_encryption.required: true",
        '    assignments: [include group "Fleet"]',
        '~ configuration profile "Banner"',
        "    settings.login_banner.text: Hello → Welcome",
        "    settings.ssh.password_authentication: false → (removed)",
        '- filter "Kiosks"',
        "1 to create, 1 to update, 1 to delete, 4 unchanged (dry run: nothing was changed)",
    ]
    result["dry_run"] = False
    assert report(result).splitlines()[-1] == "1 created, 1 updated, 1 deleted, 4 unchanged"


def test_command_errors_are_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CORRAL_URL", "CORRAL_TOKEN", "CORRAL_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    document = tmp_path / "tenant.yaml"
    document.write_text(yaml.safe_dump(DOCUMENT))
    result = runner.invoke(app, ["policies", "apply", str(document)])
    assert result.exit_code == 1
    assert "An API token is needed: --token or CORRAL_TOKEN" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nfilters: [\n")
    result = runner.invoke(app, ["policies", "apply", str(bad), "--token", "t"])
    assert result.exit_code == 1 and f"{bad}: line 3, column 1" in result.output
    result = runner.invoke(app, ["policies", "apply", str(tmp_path / "missing.yaml"), "--token", "t"])
    assert result.exit_code == 1 and "cannot read it" in result.output
    closed = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["policies", "export", "--token", "t", "--url", closed])
    assert result.exit_code == 1 and f"cannot reach {closed}" in result.output
