"""Issue 10's "done when", through HTTP only: a real Corral on loopback, its worker, the APNs stand-in (HTTP/2
over TLS), and a simulated iPhone speaking Apple's protocol. An administrator uploads a push certificate and
creates an iOS enrollment token; the iPhone downloads and verifies the profile, enrolls over SCEP, sends
Authenticate and TokenUpdate, and shows in the device list with its inventory; the help desk locks it from the
portal, the stand-in receives the push, the iPhone connects, gets DeviceLock and acknowledges, and the portal
shows it succeeded; a retire removes management and later requests are refused. (Debian's scepclient and the
captured device messages: test_scepclient.py, test_checkin.py, test_connect.py.)"""

from __future__ import annotations

import asyncio
import plistlib
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.apple import push as apple_push
from corral.apple.simulator import AppleDevice
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR
from corral.worker.runner import run_worker
from tests.apple.support import apple_ca_pem, set_up_push_certificate
from tests.conftest import Factory, portal_csrf
from tests.live import start_live_server
from tests.peers.apns_standin import ApnsStandin
from tests.worker.conftest import QUIET


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_an_iphone_enrolls_is_locked_from_the_portal_and_retired(
    tmp_path: Path, db_url: str, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with ApnsStandin(apple_ca_pem(), tmp_path / "apns") as apns:
        live = start_live_server(
            tmp_path,
            db_url,
            apple_allow_http=True,
            apple_apns_url=apns.url,
            apple_apns_ca_file=Path(apns.ca_file),
            **QUIET,
        )
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(live.settings, db_url, sessionmaker, stop, concurrency=2))
        try:
            async with (
                httpx.AsyncClient(base_url=live.url, timeout=30) as api,
                httpx.AsyncClient(base_url=live.url, timeout=30) as portal,
                httpx.AsyncClient(timeout=30) as radio,  # the iPhone's own connection
            ):
                await _scenario(api, portal, radio, apns, factory)
        finally:
            stop.set()
            await asyncio.wait_for(worker, 30)
            await apple_push.clients.aclose()
            live.stop()


async def _scenario(
    api: httpx.AsyncClient,
    portal: httpx.AsyncClient,
    radio: httpx.AsyncClient,
    apns: ApnsStandin,
    factory: Factory,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    topic = await set_up_push_certificate(api, admin)
    created = await api.post(
        "/api/v1/enrollment-tokens",
        json={"name": "Sales iPhones", "platforms": ["ios"]},
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text
    profile_url = created.json()["apple_enrollment_url"]
    assert profile_url.startswith(f"{api.base_url}/apple/v1/enroll?token=")

    # The iPhone: the profile (signature checked against the CA it carries, as a user who installs it does),
    # SCEP, then Authenticate and TokenUpdate. Pushed, it connects and answers what it is sent.
    phone = AppleDevice("iphone", seed="end-to-end")
    await phone.fetch_profile(radio, profile_url, None)
    await phone.scep_enroll(radio)
    phone.token_update_message()
    handled: list[str] = []

    async def woken(magic: str) -> None:
        assert magic == phone.push_magic
        handled.extend(await phone.connect_loop(radio))

    apns.on_push[phone.push_token.hex()] = woken
    await phone.check_in(radio)

    # Enrolled: pushed at once, it reports its inventory; it shows in the device list.
    [first] = await apns.wait_for(1, timeout=20)
    assert first.topic == topic and first.http_version == "2"

    async def listed() -> dict[str, Any] | None:
        page = (
            await api.get("/api/v1/devices", params={"search": phone.serial_number}, headers=admin.headers)
        ).json()
        items = page["items"] if isinstance(page, dict) else page
        return items[0] if items else None

    item = await until(listed, "the iPhone in the device list")
    assert item["management_channel"] == "apple_mdm" and item["platform"] == "ios"
    device_id = item["id"]

    async def detail() -> dict[str, Any]:
        result: dict[str, Any] = (await api.get(f"/api/v1/devices/{device_id}", headers=admin.headers)).json()
        return result

    inventoried = await until(
        lambda: _when(detail(), lambda d: bool(d["apple_mdm"]["facts"].get("certificates"))), "the inventory"
    )
    assert (
        inventoried["storage_total_bytes"] == 256 * 10**9 and inventoried["apple_mdm"]["push_state"] == "ok"
    )
    assert {a["name"] for a in inventoried["inventory"]["apps"]} >= {"Slack"}

    # The help desk locks it from the portal.
    csrf = await portal_csrf(portal, helpdesk.email)
    page = await portal.get(f"/portal/devices/{device_id}")
    key = re.search(r'action="[^"]+/actions/lock".*?name="idempotency_key" value="([^"]+)"', page.text, re.S)
    assert key, "the lock form is on the device page"
    queued = await portal.post(
        f"/portal/devices/{device_id}/actions/lock",
        data={
            "message": "Lost? Call +1 555 0100",
            "phone": "+1 555 0100",
            "csrf_token": csrf,
            "idempotency_key": key.group(1),
        },
    )
    assert queued.status_code == 303, queued.text

    # APNs gets the wake-up for the device's token, topic and magic; the iPhone connects and takes DeviceLock.
    pushes = await apns.wait_for(2, timeout=20)
    assert (pushes[-1].token, pushes[-1].topic, pushes[-1].magic) == (
        phone.push_token.hex(),
        topic,
        phone.push_magic,
    )
    await until(lambda: _true("DeviceLock" in handled), "DeviceLock at the iPhone")
    lock = phone.received[-1]["Command"]
    assert lock == {
        "RequestType": "DeviceLock",
        "Message": "Lost? Call +1 555 0100",
        "PhoneNumber": "+1 555 0100",
    }

    async def lock_succeeded() -> bool:
        history = (await api.get(f"/api/v1/devices/{device_id}/commands", headers=helpdesk.headers)).json()
        return any(c["type"] == "lock" and c["status"] == "succeeded" for c in history)

    await until(lock_succeeded, "the lock to succeed")
    shown = await portal.get(f"/portal/devices/{device_id}")
    assert re.search(r"Lock.*?badge--success\">Succeeded", shown.text, re.S), (
        "the portal shows the lock succeeded"
    )

    # Retire: the enrollment profile is removed, the device checks out; retired and refused from then on.
    name = inventoried["name"]
    retire = await api.post(
        f"/api/v1/devices/{device_id}/actions/retire",
        json={"reason": "Returned by the employee", "confirm": name},
        headers=admin.headers,
    )
    assert retire.status_code == 202, retire.text
    await until(lambda: _true(phone.checked_out), "RemoveProfile at the iPhone")
    retired = await until(lambda: _when(detail(), lambda d: d["management_state"] == "retired"), "the retire")
    assert retired["apple_mdm"]["ended_at"] is not None
    later = await phone.connect(radio, {"Status": "Idle"})
    assert (
        later.status_code == 403 and plistlib.loads(later.content)["code"] == "com.apple.unrecognized.device"
    )
    again = await phone.send(radio, phone.token_update_message())
    assert again.status_code == 403


async def _when(
    value: Awaitable[dict[str, Any]], test: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    result = await value
    return result if test(result) else None


async def _true(value: bool) -> bool:
    return value
