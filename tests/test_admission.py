"""Admission control: device requests beyond the process's places wait briefly, then get 429 with
Retry-After and nothing else is done for them; the wake-up stream and every other path are not counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from corral import error_handlers
from corral.kit.admission import REFUSED, Admission, AdmissionMiddleware
from corral.main import create_app
from tests.conftest import Factory, make_settings, new_client
from tests.devices.test_enrollment_and_checkin import enrolled


def _app(release: asyncio.Event, started: asyncio.Event) -> AdmissionMiddleware:
    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/device/v1/slow":
            started.set()
            await release.wait()
        await JSONResponse({"path": scope["path"]})(scope, receive, send)

    return AdmissionMiddleware(
        inner,
        admission=Admission(1),
        prefix="/device/v1/",
        exclude=("/device/v1/events",),
        wait_seconds=0.05,
        retry_after_seconds=7,
        render=lambda _r, status, detail, headers: error_handlers.problem(
            status, "Too many", detail, headers=headers
        ),
    )


async def test_a_full_process_answers_429_with_retry_after_and_counts_only_device_requests() -> None:
    release, started = asyncio.Event(), asyncio.Event()
    app = _app(release, started)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://corral") as client:
        slow = asyncio.create_task(client.get("/device/v1/slow"))
        await started.wait()
        assert app.admission.busy == 1
        before = REFUSED._value.get()
        refused = await client.get("/device/v1/checkin")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "7"
        assert refused.headers["content-type"] == "application/problem+json"
        assert "busy" in refused.json()["detail"]
        assert REFUSED._value.get() == before + 1
        # Not counted: the long-lived wake-up stream, the admin API, the admin center.
        for path in ("/device/v1/events", "/api/v1/devices", "/portal"):
            assert (await client.get(path)).status_code == 200, path
        release.set()
        assert (await slow).status_code == 200
        assert app.admission.busy == 0
        assert (await client.get("/device/v1/checkin")).status_code == 200


async def test_the_application_admits_device_requests_within_its_places(
    factory: Factory, tmp_path: Path, db_url: str
) -> None:
    settings = make_settings(tmp_path, db_url, device_concurrency=1, device_admission_wait_seconds=0)
    application = create_app(settings, database_url=db_url)
    async with application.router.lifespan_context(application), new_client(application) as client:
        admin = await factory.admin()
        device = await enrolled(client, admin)
        admission: Admission = application.state.admission
        assert admission.limit == 1
        await admission.places.acquire()  # another device request holds the only place
        try:
            busy = await device.checkin()
            assert busy.status_code == 429 and busy.headers["retry-after"] == "5"
            # The admin API is not held back by device load.
            assert (await client.get("/api/v1/devices", headers=admin.headers)).status_code == 200
        finally:
            admission.places.release()
        assert (await device.checkin()).status_code == 200
    default = create_app(make_settings(tmp_path, db_url), database_url=db_url)
    assert default.state.admission.limit == settings.db_pool_size
