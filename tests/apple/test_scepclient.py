"""Corral's SCEP server against a real SCEP client: Debian's ``scepclient`` (micromdm/scep 2.1.0, package
``scep``; ./run test installs it), over HTTP on loopback. It sends single-DES envelopes and SHA-1
signatures, so this also holds the legacy path to what a deployed client really sends."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.apple import plist
from corral.kit import cms
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from tests.apple.support import apple_token, ca_certificate, set_up_push_certificate
from tests.conftest import Factory, audit_rows, count_rows
from tests.live import LiveServer, start_live_server

SCEPCLIENT = shutil.which("scepclient")


@pytest.fixture
def scepclient() -> str:
    if SCEPCLIENT is None:
        pytest.fail("Debian's scepclient is missing: install the 'scep' package (./run test does)")
    return SCEPCLIENT


@pytest.fixture
def live(tmp_path: Path, db_url: str) -> Iterator[LiveServer]:
    server = start_live_server(tmp_path, db_url, apple_allow_http=True)
    yield server
    server.stop()


async def run_scepclient(
    binary: str, url: str, directory: Path, challenge: str, ra_sha256: str, bits: int
) -> tuple[int, str]:
    directory.mkdir()
    process = await asyncio.create_subprocess_exec(
        binary,
        "-server-url", f"{url}/apple/v1/scep",
        "-private-key", str(directory / "device.key"),
        "-challenge", challenge,
        "-cn", "device-001",
        "-keySize", str(bits),
        "-ca-fingerprint", ra_sha256,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, output.decode(errors="replace")


async def challenge_from_profile(client: httpx.AsyncClient, secret: str) -> str:
    response = await client.get(f"/apple/v1/enroll?token={quote(secret)}")
    assert response.status_code == 200, response.text
    profile = plist.parse(cms.verify_signed_data(response.content).content, max_bytes=1 << 20)
    [scep] = [p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.security.scep"]
    challenge: str = scep["PayloadContent"]["Challenge"]
    return challenge


async def test_debian_scepclient_gets_a_certificate_and_is_refused_a_bad_or_spent_challenge(
    live: LiveServer,
    scepclient: str,
    tmp_path: Path,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
        await set_up_push_certificate(client, admin)
        secret = await apple_token(client, admin)
        challenge = await challenge_from_profile(client, secret)
        cacert = await client.get("/apple/v1/scep", params={"operation": "GetCACert"})
        ra = cms.certificates_of(cacert.content)[0]
        ra_sha256 = hashlib.sha256(ra.public_bytes(Encoding.DER)).hexdigest()

        code, output = await run_scepclient(scepclient, live.url, tmp_path / "ok", challenge, ra_sha256, 2048)
        assert code == 0, output
        issued = x509.load_pem_x509_certificate((tmp_path / "ok" / "client.pem").read_bytes())
        issued.verify_directly_issued_by(await ca_certificate(sessionmaker, live.settings, "device"))
        key = issued.public_key()
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
        assert await count_rows(sessionmaker, "apple_pending_identities") == 1

        # The same challenge again, a made-up one, and a key Corral refuses: no certificate, each audited.
        fresh = await challenge_from_profile(client, secret)
        for name, words, bits in (
            ("used", challenge, 2048),
            ("wrong", "guess", 2048),
            ("small", fresh, 1024),
        ):
            code, output = await run_scepclient(scepclient, live.url, tmp_path / name, words, ra_sha256, bits)
            assert code != 0 and "failInfo" in output, output
            assert not (tmp_path / name / "client.pem").exists()
    assert await count_rows(sessionmaker, "apple_pending_identities") == 1
    details = [
        e.detail for e in await audit_rows(sessionmaker, activity="apple.scep.issue") if e.result == "failure"
    ]
    assert any("already been used" in (d or "") for d in details)
    assert any("is not valid" in (d or "") for d in details)
    assert any("request was refused" in (d or "") for d in details)
