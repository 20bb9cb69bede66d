"""Custom payloads: a raw .mobileconfig (XML, binary, or signed — accepted only when its signature verifies),
Windows OMA-URI rows and JSON for the agent; each refused with its reason when malformed, delivered in the
desired state as its profile's own (never a conflict with another profile's), applied by the agent."""

from __future__ import annotations

import base64
import plistlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from corral_agent.appliers import ApplyContext, apply_custom
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from tests.conftest import Admin, Factory
from tests.devices.test_enrollment_and_checkin import enrolled


def mobileconfig(**extra: Any) -> dict[str, Any]:
    return {
        "PayloadType": "Configuration",
        "PayloadIdentifier": "com.example.restrictions",
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadVersion": 1,
        "PayloadDisplayName": "Restrictions",
        "PayloadContent": [
            {
                "PayloadType": "com.apple.applicationaccess",
                "PayloadIdentifier": "com.example.restrictions.camera",
                "PayloadUUID": str(uuid.uuid4()),
                "PayloadVersion": 1,
                "allowCamera": False,
            }
        ],
        **extra,
    }


def sign(content: bytes, key: Any = None) -> bytes:
    """A CMS SignedData around ``content`` (as Apple Configurator's "Sign" makes), DER."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Profile signer")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(certificate, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )


async def create(
    client: httpx.AsyncClient, admin: Admin, platform: str, settings: dict[str, Any], name: str = ""
) -> httpx.Response:
    return await client.post(
        "/api/v1/configuration-profiles",
        json={"name": name or f"custom {uuid.uuid4().hex[:6]}", "platform": platform, "settings": settings},
        headers=admin.headers,
    )


async def test_a_mobileconfig_as_xml_binary_or_signed(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    xml = plistlib.dumps(mobileconfig()).decode()
    made = await create(client, admin, "macos", {"custom.mobileconfig": xml})
    assert made.status_code == 201, made.text
    assert made.json()["settings"]["custom.mobileconfig"] == xml.strip()  # the XML as given

    binary = plistlib.dumps(mobileconfig(), fmt=plistlib.FMT_BINARY)
    made = await create(client, admin, "ios", {"custom.mobileconfig": base64.b64encode(binary).decode()})
    assert made.status_code == 201, made.text
    stored = made.json()["settings"]["custom.mobileconfig"]
    assert plistlib.loads(stored.encode())["PayloadIdentifier"] == "com.example.restrictions"

    for key in (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
    ):
        signed = sign(xml.encode(), key)
        made = await create(
            client, admin, "ipados", {"custom.mobileconfig": base64.b64encode(signed).decode()}
        )
        assert made.status_code == 201, made.text
        # Stored (and delivered) as its content: the device gets the profile, not the signature.
        assert plistlib.loads(made.json()["settings"]["custom.mobileconfig"].encode()) == plistlib.loads(
            xml.encode()
        )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "must be the profile's XML"),
        ("not base64 at all!", "neither XML nor base64"),
        ("<plist><dict><key>a</key></dict></plist>", "not a valid property list"),
        (plistlib.dumps({"PayloadType": "Configuration"}).decode(), "the profile has no PayloadIdentifier"),
        (
            plistlib.dumps(mobileconfig(PayloadType="com.apple.wifi.managed")).decode(),
            "PayloadType must be Configuration",
        ),
        (plistlib.dumps(mobileconfig(PayloadUUID="nope")).decode(), "PayloadUUID is not a UUID"),
        (plistlib.dumps(mobileconfig(PayloadContent=[{"PayloadType": "x"}])).decode(), "payload 1 has no"),
        (plistlib.dumps(mobileconfig(PayloadContent="x")).decode(), "PayloadContent must be an array"),
        (
            '<?xml version="1.0"?><!DOCTYPE plist [<!ENTITY a "aaaa">]><plist><string>&a;</string></plist>',
            "not a valid property list",
        ),
        (
            plistlib.dumps(mobileconfig(PayloadDescription="x" * 210_000)).decode(),
            "larger than 200 KiB",
        ),
        (base64.b64encode(b"\x30\x03\x02\x01\x01").decode(), "not a property list, nor a signed one"),
    ],
)
async def test_bad_mobileconfigs_are_refused_with_the_reason(
    client: httpx.AsyncClient, factory: Factory, value: str, message: str
) -> None:
    admin = await factory.admin()
    refused = await create(client, admin, "macos", {"custom.mobileconfig": value})
    assert refused.status_code in (413, 422), refused.text
    if refused.status_code == 422:
        assert message in refused.json()["detail"], refused.json()["detail"]
        assert refused.json()["detail"].startswith("settings.custom.mobileconfig: ")
    assert (await client.get("/api/v1/configuration-profiles", headers=admin.headers)).json() == []


async def test_a_tampered_signed_profile_is_refused(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    content = plistlib.dumps(mobileconfig())
    signed = sign(content)
    tampered = signed.replace(b"com.example.restrictions.camera", b"com.example.restrictions.kamera")
    assert tampered != signed
    refused = await create(
        client, admin, "macos", {"custom.mobileconfig": base64.b64encode(tampered).decode()}
    )
    assert refused.status_code == 422
    assert "does not match its signature" in refused.json()["detail"]
    # A mobileconfig is an Apple payload: not for Windows.
    refused = await create(client, admin, "windows", {"custom.mobileconfig": content.decode()})
    assert refused.status_code == 422 and "not available for windows" in refused.json()["detail"]


async def test_oma_uri_rows_and_agent_json(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    rows = [
        {
            "name": "Camera off",
            "oma_uri": "./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera",
            "data_type": "integer",
            "value": "0",
        },
        {
            "name": "Banner",
            "oma_uri": "./Vendor/MSFT/Example/Xml",
            "data_type": "xml",
            "value": "<a><b/></a>",
        },
    ]
    made = await create(client, admin, "windows", {"custom.oma_uri": rows})
    assert made.status_code == 201, made.text
    assert made.json()["settings"]["custom.oma_uri"] == rows
    bad_rows: list[tuple[dict[str, Any], str]] = [
        ({**rows[0], "oma_uri": "HKLM\\Software"}, "0.oma_uri: must start with ./Device/"),
        ({**rows[0], "value": "zero"}, "0.value: must be a whole number (data type integer)"),
        ({**rows[0], "data_type": "blob"}, "0.data_type: must be one of"),
        ({**rows[1], "value": "<a>"}, "must be well-formed XML"),
        ({**rows[1], "value": '<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'}, "must not declare a DOCTYPE"),
        ({**rows[0], "colour": "red"}, "0.colour: unknown field"),
    ]
    for row, message in bad_rows:
        refused = await create(client, admin, "windows", {"custom.oma_uri": [row]})
        assert refused.status_code == 422 and message in refused.json()["detail"], refused.text
    refused = await create(client, admin, "windows", {"custom.oma_uri": [rows[0], rows[0]]})
    assert "is set twice" in refused.json()["detail"]
    refused = await create(client, admin, "windows", {"custom.oma_uri": [rows[0]] * 101})
    assert refused.status_code == 422

    made = await create(client, admin, "linux", {"custom.json": {"team": "web", "ports": [80, 443]}})
    assert made.status_code == 201, made.text
    made = await create(client, admin, "linux", {"custom.json": '{"team": "db"}'})
    assert made.json()["settings"]["custom.json"] == {"team": "db"}  # text is parsed
    deep: Any = 1
    for _ in range(20):
        deep = {"a": deep}
    for value, message in (
        ([1, 2], "must be a JSON object"),
        ("{not json", "not valid JSON"),
        (deep, "nested deeper than 16 levels"),
        ({"big": "x" * 70_000}, "larger than 64 KiB"),
    ):
        refused = await create(client, admin, "linux", {"custom.json": value})
        assert refused.status_code == 422 and message in refused.json()["detail"], refused.text


async def test_custom_payloads_are_each_profiles_own_in_the_desired_state(
    client: httpx.AsyncClient, factory: Factory, tmp_path: Path
) -> None:
    admin = await factory.admin()
    device = await enrolled(client, admin)
    ids = []
    for team in ("web", "db"):
        made = await create(client, admin, "linux", {"custom.json": {"team": team}}, name=f"Team {team}")
        ids.append(made.json()["id"])
        assigned = await client.put(
            f"/api/v1/configuration-profiles/{made.json()['id']}/assignments",
            json={"assignments": [{"target": "all_devices"}]},
            headers=admin.headers,
        )
        assert assigned.status_code == 200
    document = (await device.request("GET", "/device/v1/desired-state")).json()
    assert document["conflicts"] == []  # two JSON payloads are two payloads, not one setting set twice
    items = [(p["id"], s["id"], s["value"]) for p in document["profiles"] for s in p["settings"]]
    assert sorted(i[2]["team"] for i in items) == ["db", "web"]

    # The agent writes each profile's JSON to its own file, and removes the files of profiles gone.
    ctx = ApplyContext(root=tmp_path, state_dir=tmp_path / "state", os_name="linux")
    results = apply_custom(ctx, items)
    assert {r.state for r in results.values()} == {"succeeded"}
    written = tmp_path / "etc/corral/custom.d"
    assert sorted(p.name for p in written.iterdir()) == sorted(f"{i}.json" for i in ids)
    assert '"team": "web"' in (written / f"{ids[0]}.json").read_text()
    results = apply_custom(ctx, [*items[:1], ("../../etc/passwd", "custom.json", {"x": 1})])
    assert results[("../../etc/passwd", "custom.json")].state == "error"
    assert sorted(p.name for p in written.iterdir()) == [f"{items[0][0]}.json"]
    # Apple and Windows payloads are their MDM channel's to install, not the agent's.
    other = apply_custom(
        ApplyContext(root=tmp_path, state_dir=tmp_path, os_name="macos"),
        [(ids[0], "custom.mobileconfig", "<plist/>")],
    )
    assert other[(ids[0], "custom.mobileconfig")].state == "not_applicable"
    recorded: list[dict[str, Any]] = []
    simulated = apply_custom(
        ApplyContext(
            root=tmp_path, state_dir=tmp_path, os_name="windows", simulate=True, record=recorded.append
        ),
        [(ids[0], "custom.oma_uri", [])],
    )
    assert simulated[(ids[0], "custom.oma_uri")].state == "succeeded" and recorded
