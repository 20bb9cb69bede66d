"""Pieces of the Apple MDM benchmarks (apple_checkin.py, apple_push_fanout.py): the APNs stand-in, a push
certificate "signed by Apple", ``corral worker`` in a process of its own, RSA keys made ahead of time.

The APNs stand-in is the test suite's (``tests/peers/apns_standin.py``: HTTP/2 over TLS, the push
certificate as client certificate, APNs' checks and answers); it runs in the benchmark's own event loop.
The stand-in "Apple" CA and the portal's issuing step are copied from ``tests/apple/support.py`` (a few
lines) rather than imported with the test fixtures around them.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import IO, Any

import httpx
from common import ROOT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from push_common import Server, corral_env

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the stand-in lives in tests/peers

from corral.config import Settings
from tests.peers.apns_standin import ApnsStandin
from tests.peers.apple_ca import apple_ca_pem, apple_issues, new_topic

__all__ = ["ApnsStandin", "apple_ca_pem", "apple_issues", "new_topic"]

PUSH_URL = "/api/v1/apple/push-certificate"
# A schedule whose latest tick is always long past: the worker defers no periodic job (as tests/worker's
# QUIET), so what it spends is the pushes'.
NEVER = "0 0 29 2 *"
QUIET = {f"CORRAL_{name.upper()}": NEVER for name in Settings.model_fields if name.endswith("_cron")}


async def set_up_push_certificate(client: httpx.AsyncClient, base_url: str, api_token: str) -> str:
    """Request, "sign at Apple" and upload a push certificate through the API; its topic."""
    headers = {"Authorization": f"Bearer {api_token}"}
    requested = await client.post(f"{base_url}{PUSH_URL}/request", headers=headers)
    assert requested.status_code == 201, requested.text
    topic = new_topic()
    uploaded = await client.put(
        f"{base_url}{PUSH_URL}",
        json={"certificate_pem": apple_issues(requested.json()["csr_pem"], topic)},
        headers=headers,
    )
    assert uploaded.status_code == 200, uploaded.text
    return topic


def removed_at_exit() -> list[Path]:
    """Directories to remove when the process exits. Call before ``common.database()``: exit handlers run
    last-registered first, so these go after the embedded PostgreSQL has stopped and deleted its data (the
    directory ``database()`` made for it is left otherwise)."""
    paths: list[Path] = []
    atexit.register(lambda: [shutil.rmtree(path, ignore_errors=True) for path in paths])
    return paths


def pgdata_parent(db: Any) -> list[Path]:
    """The directory ``common.database()`` made for a throwaway embedded PostgreSQL (none for an external
    server)."""
    pgdata = getattr(db.handle, "pgdata", None)
    return [Path(pgdata).parent] if pgdata is not None else []


def tree() -> str:
    """The commit the servers run (and whether src/ differs from it): Corral changes under a run."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return head + (" (src/ modified)" if dirty else "")


def apple_env(apns: ApnsStandin) -> dict[str, str]:
    """Corral's settings for a plain-http base URL (loopback) and the stand-in as APNs."""
    return {
        "CORRAL_APPLE_ALLOW_HTTP": "true",
        "CORRAL_APPLE_APNS_URL": apns.url,
        "CORRAL_APPLE_APNS_CA_FILE": apns.ca_file,
    }


def start_worker(db_url: str, data_dir: Path, extra_env: dict[str, str], log: Path) -> Server:
    """``corral worker`` in a process of its own (its CPU measured apart from the server's), periodic jobs
    off."""
    out: IO[bytes] = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "worker"],
        env=corral_env(db_url, "http://127.0.0.1", data_dir) | QUIET | extra_env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    return Server("worker", process, out)


def _rsa_key_der(_index: int) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def rsa_keys(count: int, workers: int = 2) -> list[rsa.RSAPrivateKey]:
    """``count`` RSA-2048 keys made in a process pool (45-100 ms each here)."""
    with ProcessPoolExecutor(workers) as pool:
        ders = list(pool.map(_rsa_key_der, range(count), chunksize=8))
    keys = []
    for der in ders:
        key = serialization.load_der_private_key(der, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        keys.append(key)
    return keys


class PregeneratedKeys:
    """Stands in for the ``rsa`` module the device simulator makes its SCEP key with: its devices take keys
    made ahead of time (``rsa_keys``), so that enrolling a few hundred of them is not a minute of key
    generation in the load generator. Everything else about the enrollment is the simulator's."""

    RSAPrivateKey = rsa.RSAPrivateKey

    def __init__(self, keys: list[rsa.RSAPrivateKey]) -> None:
        self._keys = keys

    def generate_private_key(self, public_exponent: int, key_size: int, backend: Any = None) -> Any:
        assert public_exponent == 65537 and key_size == 2048, (public_exponent, key_size)
        if not self._keys:
            return rsa.generate_private_key(public_exponent=public_exponent, key_size=key_size)
        return self._keys.pop()
