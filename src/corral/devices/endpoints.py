from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Query, Response, status

from corral.auth.dependencies import Require
from corral.commands.registry import REGISTRY, CommandType
from corral.commands.schemas import (
    ActionOut,
    ActionRequest,
    ApproveRequest,
    CommandOut,
    PendingApprovalOut,
    RejectRequest,
)
from corral.commands.service import CommandRequest, command_service
from corral.devices import access
from corral.devices.bulk import BULK_PERMISSIONS, bulk_service
from corral.devices.schemas import (
    BulkActionCreate,
    BulkActionDetail,
    BulkActionPage,
    CancelCounts,
    DeviceAppOut,
    DeviceDetail,
    DeviceFilter,
    DevicePage,
    DeviceUpdate,
    InventoryChangeOut,
    WhoCanOut,
)
from corral.devices.service import device_out, device_service
from corral.kit.csvexport import csv_response
from corral.kit.db import SessionDep
from corral.kit.deps import SessionMakerDep, SettingsDep
from corral.kit.routing import APIRouter
from corral.models import DeviceCommand
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(prefix="/devices", tags=["devices"])

DevicesRead = Annotated[Principal, Depends(Require(P.devices_read))]
DevicesUpdate = Annotated[Principal, Depends(Require(P.devices_update))]
DevicesDelete = Annotated[Principal, Depends(Require(P.devices_delete))]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}


@router.get("", response_model=DevicePage)
async def list_devices(
    session: SessionDep,
    settings: SettingsDep,
    principal: DevicesRead,
    filters: Annotated[DeviceFilter, Query()],
) -> DevicePage:
    """Devices in your scope: search, filter, sort, keyset pagination."""
    items, next_cursor, total = await device_service.page(session, settings, principal, filters)
    return DevicePage(
        items=[device_out(d, settings.stale_device_days) for d in items],
        next_cursor=next_cursor,
        total=total.value,
        total_exact=total.exact,
    )


@router.get(
    "/export.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV of the filtered devices"}},
)
async def export_devices(
    maker: SessionMakerDep,
    settings: SettingsDep,
    principal: DevicesRead,
    filters: Annotated[DeviceFilter, Query()],
) -> Response:
    """Every filtered device in your scope as CSV, streamed (paging parameters are ignored)."""
    return csv_response(device_service.export_csv(maker, settings, principal, filters), "corral-devices.csv")


@router.get("/remote-actions", response_model=list[ActionOut])
async def list_remote_actions(_: DevicesRead) -> list[ActionOut]:
    """The remote actions Corral knows, with their permission, platforms and ownership rules."""
    return [
        ActionOut(
            name=c.name,
            label=c.label,
            permission=c.permission.value,
            platforms=sorted(p.value for p in c.platforms),
            company_only=c.company_only,
            destructive=c.destructive,
            description=c.description,
        )
        for c in REGISTRY.values()
    ]


# Before "/{device_id}", which would take "approvals" for a device id.
@router.get("/approvals", response_model=list[PendingApprovalOut])
async def list_pending_approvals(
    session: SessionDep, principal: Annotated[Principal, Depends(Require(P.remote_approve))]
) -> list[PendingApprovalOut]:
    """Wipes waiting for a second administrator's approval, oldest first, on devices in your scope.

    With the tenant setting wipe_requires_approval on; your own requests are listed with can_approve false."""
    return [
        PendingApprovalOut.model_validate(
            {
                **CommandOut.model_validate(command).model_dump(),
                "device_name": device.name,
                "device_serial_number": device.serial_number,
                "can_approve": command_service.can_approve(principal, device, command),
            }
        )
        for command, device in await command_service.pending_approvals(session, principal)
    ]


# ------------------------------------------------------------------------------------------- bulk actions
# Before the /{device_id} routes: "bulk-actions" is not a device id.
BulkSender = Annotated[Principal, Depends(Require(*BULK_PERMISSIONS, any_of=True))]


@router.post(
    "/bulk-actions",
    response_model=BulkActionDetail,
    status_code=status.HTTP_201_CREATED,
    responses={403: {"description": "Without the chosen action's permission"}},
)
async def create_bulk_action(
    data: BulkActionCreate, session: SessionDep, settings: SettingsDep, principal: BulkSender
) -> BulkActionDetail:
    """Send one remote action to a selection of devices (needs the action's own permission)."""
    return await bulk_service.create(session, settings, principal, data)


@router.get("/bulk-actions", response_model=BulkActionPage)
async def list_bulk_actions(
    session: SessionDep,
    principal: DevicesRead,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> BulkActionPage:
    """Bulk actions, newest first, with their progress counts (keyset pagination)."""
    items, next_cursor = await bulk_service.page(session, cursor, limit)
    return BulkActionPage(items=items, next_cursor=next_cursor)


@router.get("/bulk-actions/{bulk_action_id:uuid}", response_model=BulkActionDetail, responses=NOT_FOUND)
async def get_bulk_action(
    bulk_action_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> BulkActionDetail:
    """A bulk action's progress: counts by state, skipped devices, one row per device you can see."""
    return await bulk_service.show(session, principal, bulk_action_id)


@router.post("/bulk-actions/{bulk_action_id:uuid}/cancel", response_model=CancelCounts, responses=NOT_FOUND)
async def cancel_bulk_action(
    bulk_action_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> CancelCounts:
    """Cancel a bulk action's commands not yet delivered (needs the permission of the action itself)."""
    canceled, kept = await bulk_service.cancel(session, principal, bulk_action_id)
    return CancelCounts(canceled=canceled, kept=kept)


@router.get("/{device_id:uuid}", response_model=DeviceDetail, responses=NOT_FOUND)
async def get_device(
    device_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: DevicesRead
) -> DeviceDetail:
    device = await device_service.get(session, principal, device_id)
    return await device_service.detail(session, settings, device)


@router.get("/{device_id:uuid}/who-can/{action}", response_model=WhoCanOut, responses=NOT_FOUND)
async def who_can(
    device_id: uuid.UUID,
    action: str,
    session: SessionDep,
    principal: Annotated[Principal, Depends(Require(P.roles_read))],
) -> WhoCanOut:
    """Who can run this remote action (e.g. ``wipe``) on this device: every enabled administrator holding
    its permission and devices:read over the device, with the role assignments giving it (directly or
    through groups; scope tags and scope groups as the device stands now). Needs roles:read and the device
    in your devices:read scope."""
    device = await device_service.get(session, principal, device_id)
    return access.who_can_out(device, await access.who_can(session, device, action))


@router.patch("/{device_id:uuid}", response_model=DeviceDetail, responses=NOT_FOUND)
async def update_device(
    device_id: uuid.UUID,
    data: DeviceUpdate,
    session: SessionDep,
    settings: SettingsDep,
    principal: DevicesUpdate,
) -> DeviceDetail:
    device = await device_service.update(session, principal, device_id, data)
    return await device_service.detail(session, settings, device)


@router.delete("/{device_id:uuid}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_device(device_id: uuid.UUID, session: SessionDep, principal: DevicesDelete) -> Response:
    """Delete the record and revoke the device's certificates: its next request is refused."""
    await device_service.delete(session, principal, device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{device_id:uuid}/inventory-history", response_model=list[InventoryChangeOut], responses=NOT_FOUND
)
async def device_inventory_history(
    device_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> list[InventoryChangeOut]:
    return [
        InventoryChangeOut.model_validate(c)
        for c in await device_service.history(session, principal, device_id)
    ]


@router.get("/{device_id:uuid}/apps", response_model=list[DeviceAppOut], responses=NOT_FOUND)
async def device_apps(
    device_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> list[DeviceAppOut]:
    return [DeviceAppOut.model_validate(a) for a in await device_service.apps(session, principal, device_id)]


@router.get("/{device_id:uuid}/commands", response_model=list[CommandOut], responses=NOT_FOUND)
async def device_commands(
    device_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> list[CommandOut]:
    """The device's remote actions, newest first, with their state."""
    return [
        CommandOut.model_validate(c) for c in await command_service.history(session, principal, device_id)
    ]


@router.post(
    "/{device_id:uuid}/commands/{command_id:uuid}/cancel",
    response_model=CommandOut,
    responses={**NOT_FOUND, 409: {"description": "Already carried out, canceled or expired"}},
)
async def cancel_command(
    device_id: uuid.UUID, command_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> CommandOut:
    """Cancel a command not yet carried out (needs the permission of the action itself)."""
    return CommandOut.model_validate(await command_service.cancel(session, principal, device_id, command_id))


@router.post("/{device_id:uuid}/commands/clear", response_model=CancelCounts, responses=NOT_FOUND)
async def clear_command_queue(
    device_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> CancelCounts:
    """Cancel every open command you may cancel (wipe and retire only until delivered); the others stay."""
    canceled, kept = await command_service.clear(session, principal, device_id)
    return CancelCounts(canceled=canceled, kept=kept)


def _action_endpoint(command_type: CommandType) -> Callable[..., Awaitable[Response]]:
    guard = Annotated[Principal, Depends(Require(command_type.permission))]

    async def run_action(
        device_id: uuid.UUID, data: ActionRequest, session: SessionDep, principal: guard
    ) -> Response:
        command, created = await command_service.queue(
            session,
            principal,
            device_id,
            CommandRequest(
                type=command_type.name,
                params=data.params,
                reason=data.reason,
                confirm=data.confirm,
                idempotency_key=data.idempotency_key,
            ),
        )
        body = CommandOut.model_validate(command).model_dump_json()
        return Response(body, status_code=202 if created else 200, media_type="application/json")

    # The guard differs per action; with postponed annotations the name ``guard`` would not resolve.
    run_action.__annotations__["principal"] = guard
    run_action.__name__ = f"device_action_{command_type.name}"
    run_action.__doc__ = (
        f"{command_type.label}: {command_type.description} Needs {command_type.permission.value}."
    )
    return run_action


for _command in REGISTRY.values():
    router.add_api_route(
        f"/{{device_id:uuid}}/actions/{_command.name}",
        _action_endpoint(_command),
        methods=["POST"],
        status_code=202,
        response_model=CommandOut,
        name=f"device_action_{_command.name}",
        responses={
            **NOT_FOUND,
            200: {"description": "Already queued with this idempotency key"},
            409: {"description": "Retired or wiped, the same action under way, or the key used for another"},
        },
    )

__all__ = ["DeviceCommand", "router"]


# ------------------------------------------------------------------------------- multi administrator approval
RemoteApprove = Annotated[Principal, Depends(Require(P.remote_approve))]
REVIEW_ERRORS: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    403: {"description": "No remote:approve over the device, or you requested it yourself"},
    409: {"description": "Not waiting for approval (already approved, rejected, canceled or expired)"},
}


@router.post(
    "/{device_id:uuid}/commands/{command_id:uuid}/approve", response_model=CommandOut, responses=REVIEW_ERRORS
)
async def approve_command(
    device_id: uuid.UUID,
    command_id: uuid.UUID,
    session: SessionDep,
    principal: RemoteApprove,
    data: ApproveRequest | None = None,
) -> CommandOut:
    """Approve a wipe another administrator requested: it is queued and the device woken to fetch it.

    Its lifetime (expires_at) starts again from the approval. Needs remote:approve over the device."""
    command = await command_service.approve(
        session, principal, device_id, command_id, data.comment if data else None
    )
    return CommandOut.model_validate(command)


@router.post(
    "/{device_id:uuid}/commands/{command_id:uuid}/reject", response_model=CommandOut, responses=REVIEW_ERRORS
)
async def reject_command(
    device_id: uuid.UUID,
    command_id: uuid.UUID,
    data: RejectRequest,
    session: SessionDep,
    principal: RemoteApprove,
) -> CommandOut:
    """Reject a wipe another administrator requested: it is canceled, never sent; the device is managed.

    The reason is kept on the command (its error) and in the audit log."""
    return CommandOut.model_validate(
        await command_service.reject(session, principal, device_id, command_id, data.reason)
    )
