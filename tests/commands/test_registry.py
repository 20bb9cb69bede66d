"""The registry's classes: their rules, and their hooks as the lifecycle service uses them (a new command type
needs no change anywhere else to be queued, delivered as it builds itself and to have its result applied)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.commands.registry import (
    REGISTRY,
    CommandType,
    EndsManagement,
    Outcome,
    Target,
)
from corral.commands.schemas import NoParams
from corral.commands.service import CommandRequest, System, command_service
from corral.models import CommandStatus, Device, ManagementState, Ownership, Platform
from corral.rbac.permissions import P
from tests.conftest import Factory
from tests.devices.test_enrollment_and_checkin import enrolled


@dataclass
class Facts:
    platform: Platform = Platform.linux
    ownership: Ownership = Ownership.company
    name: str = "kiosk-1"


def test_every_entry_is_listed_under_its_own_name_in_the_documented_order() -> None:
    assert list(REGISTRY) == [
        "lock",
        "wipe",
        "retire",
        "sync",
        "restart",
        "shutdown",
        "locate",
        "lost_mode_on",
        "lost_mode_off",
        "passcode_reset",
        "rename",
        "notify",
    ]
    assert all(isinstance(c, CommandType) and key == c.name for key, c in REGISTRY.items())
    assert {n for n, c in REGISTRY.items() if isinstance(c, EndsManagement)} == {"wipe", "retire"}
    assert [n for n, c in REGISTRY.items() if c.not_in_bulk] == ["rename"]
    assert [n for n, c in REGISTRY.items() if c.approvable] == ["wipe"]


def test_refusals_name_the_platform_and_point_personal_wipes_to_retire() -> None:
    assert REGISTRY["lock"].refusal(Facts()) is None
    assert REGISTRY["locate"].refusal(Facts()) == "Locate is not available for linux devices."
    personal = REGISTRY["wipe"].refusal(Facts(ownership=Ownership.personal))
    assert personal is not None and personal.startswith("Wipe is only for company-owned devices")
    assert "Retire it instead" in personal
    lost = REGISTRY["lost_mode_on"].refusal(Facts(platform=Platform.ios, ownership=Ownership.personal))
    assert lost is not None and "Retire it instead" not in lost


@pytest.mark.parametrize(
    ("name", "status", "outcome"),
    [
        ("wipe", CommandStatus.acknowledged, Outcome(ends_management=ManagementState.wiped)),
        ("wipe", CommandStatus.succeeded, Outcome(ends_management=ManagementState.wiped)),
        ("wipe", CommandStatus.failed, Outcome()),
        ("retire", CommandStatus.succeeded, Outcome(ends_management=ManagementState.retired)),
        ("retire", CommandStatus.not_now, Outcome()),
        ("rename", CommandStatus.succeeded, Outcome(name="reception")),
        ("rename", CommandStatus.acknowledged, Outcome()),
        ("lock", CommandStatus.succeeded, Outcome()),
    ],
)
def test_what_a_result_does_to_the_device(name: str, status: CommandStatus, outcome: Outcome) -> None:
    assert REGISTRY[name].on_result(status, {"name": "reception"}, Facts()) == outcome


def test_the_device_receives_the_parameters_as_queued_by_default() -> None:
    params = {"message": "Call IT"}
    built = REGISTRY["lock"].build(params, Facts())
    assert built == params and built is not params


class ShowMessageParams(NoParams):
    text: str


class ShowMessage(CommandType):
    """A made-up type, as a compliance feature might add: built per device, renaming it when done."""

    name, label, permission = "show_message", "Show a message", P.remote_lock
    params = ShowMessageParams

    def build(self, params: dict[str, Any], device: Target) -> dict[str, Any]:
        return {"title": f"Message for {device.name}", "body": params["text"]}

    def on_result(self, status: CommandStatus, params: dict[str, Any], device: Target) -> Outcome:
        return Outcome(name=f"{device.name} (told)") if status is CommandStatus.succeeded else Outcome()


async def test_a_new_type_is_queued_delivered_as_it_builds_itself_and_its_result_applied(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(REGISTRY, ShowMessage.name, ShowMessage())
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    device_id = uuid.UUID(str(device.device_id))
    async with sessionmaker() as session:
        name = (await session.get(Device, device_id)).name  # type: ignore[union-attr]
        command, _created = await command_service.queue(
            session,
            System("Corral (tests)"),
            device_id,
            CommandRequest("show_message", {"text": "Encrypt your disk"}, reason="Noncompliant"),
        )
        await session.commit()

    delivered = (await device.checkin({})).json()["commands"]

    assert delivered == [
        {
            "id": str(command.id),
            "type": "show_message",
            "params": {"title": f"Message for {name}", "body": "Encrypt your disk"},
            "expires_at": delivered[0]["expires_at"],
        }
    ]
    done = [{"command_id": str(command.id), "status": "succeeded"}]
    assert (await device.checkin({"command_results": done})).status_code == 200
    shown = await client.get(f"/api/v1/devices/{device_id}", headers=admin.headers)
    assert shown.json()["name"] == f"{name} (told)"
