"""Outside your scope is "not found", proven from the route table: every route, API and admin center, that
takes a user or device id — in its path, its query, its JSON body or its form, as an id or as a name to look
up — answers an id outside the caller's scope exactly as it answers an id nobody ever used (same status,
same problem or page, same flash message), and answers one inside it differently (so the probe reaches the
object, and the refusal is the scope's).

The caller is a Global administrator whose role assignment is limited to one scope group (every permission,
over the members of Paris only) or, for devices, to one scope tag. Each probe makes three subjects of its
own (a user or device in scope, one outside it, an id never used), so in-scope actions (delete, wipe…) touch
nothing another probe needs.

A new route taking such an id fails ``test_every_route_taking_a_user_or_device_id_is_probed`` until it gets
a probe here, or an entry in ALLOWED saying why it needs none."""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import re
import sys
import textwrap
import typing
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI, Form, Query, Request
from fastapi.dependencies.models import Dependant
from pydantic import BaseModel
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.commands.registry import REGISTRY
from corral.groups.schemas import MemberType
from corral.kit.db import create_engine, create_sessionmaker
from corral.kit.routes import RouteInfo, api_routes
from corral.models import CommandStatus, DeviceCommand, device_scope_tags, group_devices, group_users
from corral.portal.rendering import FLASH_COOKIE, REVEAL_COOKIE
from tests.conftest import Admin, Factory, issue_token, make_settings, new_client, running_app, sign_in
from tests.groups.helpers import create_group, dynamic_group, insert_devices
from tests.test_route_guards import ROUTES
from tests.test_scope_groups import assign, role_id

# ------------------------------------------------------------------------------------------- detection
# Field names that carry a user or a device: an id, several, or a name looked up (sign-in name, device
# name or serial number). A model with a ``type: MemberType`` and an ``id`` names a user or device too.
ID_FIELD = re.compile(r"^(user|device|member)_ids?$|^(explain_)?lookup$")
MEMBER = "member"
# Response models (the conventions' XOut, pages…) carry ids out, not in.
OUTPUT_MODEL = re.compile(r"(Out|Page|Response|Detail|Created)$")


def _types(annotation: Any) -> Iterator[Any]:
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _types(arg)


def model_id_fields(model: type[BaseModel], seen: frozenset[type] = frozenset()) -> set[str]:
    """The user or device fields of an input model, nested models included."""
    if model in seen or OUTPUT_MODEL.search(model.__name__):
        return set()
    found = set()
    fields = model.model_fields
    for name, info in fields.items():
        if ID_FIELD.match(name):
            found.add(name)
        if name == "id" and any(f.annotation is MemberType for f in fields.values()):
            found.add(MEMBER)
        for t in _types(info.annotation):
            if isinstance(t, type) and issubclass(t, BaseModel):
                found |= model_id_fields(t, seen | {model})
    return found


def _declared(dependant: Dependant) -> set[str]:
    """From the parameters FastAPI parses: path, query, body and form, in the whole dependency tree."""
    found = set()
    for param in [*dependant.path_params, *dependant.query_params, *dependant.body_params]:
        if ID_FIELD.match(param.name):
            found.add(param.name)
        for t in _types(param.field_info.annotation):
            if isinstance(t, type) and issubclass(t, BaseModel):
                found |= model_id_fields(t)
    for sub in dependant.dependencies:
        found |= _declared(sub)
    return found


def _read_by_hand(endpoint: Callable[..., Any]) -> set[str]:
    """From what the handler (and the module's functions it calls) reads itself, as the admin center's
    forms do: a field name passed to ``form.get(…)``/``getlist`` or listed in a tuple of fields, and input
    models filled generically (``X.model_validate``, ``X.model_fields``)."""
    module = sys.modules[endpoint.__module__]
    found: set[str] = set()
    todo, seen = [endpoint], set()
    while todo:
        function = todo.pop()
        if function in seen:
            continue
        seen.add(function)
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        definition = tree.body[0]
        assert isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in (n for statement in definition.body for n in ast.walk(statement)):
            literals: list[ast.expr] = []
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in {"get", "getlist"}:
                    literals = node.args[:1]
                elif node.func.attr == "model_validate" and isinstance(node.func.value, ast.Name):
                    model = getattr(module, node.func.value.id, None)
                    if isinstance(model, type) and issubclass(model, BaseModel):
                        found |= model_id_fields(model)
            elif isinstance(node, ast.Tuple | ast.List | ast.Set):
                literals = node.elts
            elif isinstance(node, ast.Attribute) and node.attr == "model_fields":
                if isinstance(node.value, ast.Name):
                    model = getattr(module, node.value.id, None)
                    if isinstance(model, type) and issubclass(model, BaseModel):
                        found |= model_id_fields(model)
            elif isinstance(node, ast.Name):
                called = getattr(module, node.id, None)
                if inspect.isfunction(called) and called.__module__ == module.__name__:
                    todo.append(called)
            for literal in literals:
                if isinstance(literal, ast.Constant) and isinstance(literal.value, str):
                    found |= {literal.value} if ID_FIELD.match(literal.value) else set()
    return found


def id_fields(info: RouteInfo) -> set[str]:
    return _declared(info.route.dependant) | _read_by_hand(info.route.endpoint)


Key = tuple[str, str, str]  # method, path, field


def detected(routes: list[RouteInfo]) -> set[Key]:
    return {(m, info.path, f) for info in routes for m in info.methods for f in id_fields(info)}


# ------------------------------------------------------------------------------------------- exceptions
# Routes that take a user or device id and legitimately need no scope check of their own, and why.
ALLOWED: dict[Key, str] = {
    # SCIM: the identity provider's bearer token, not an administrator; it provisions its own users.
    **{
        (m, "/scim/v2/Users/{user_id}", "user_id"): "the identity provider provisions users: no admin scope"
        for m in ("GET", "PUT", "PATCH", "DELETE")
    },
    # A filter over devices already in the caller's scope: a device's user_id is one of its attributes
    # (listed with it), and an id outside the scope selects nothing more than any other.
    **{
        ("GET", path, "user_id"): "a filter over the devices in scope (user_id is a device attribute)"
        for path in (
            "/api/v1/devices",
            "/api/v1/devices/export.csv",
            "/portal/devices",
            "/portal/devices/export.csv",
        )
    },
    ("POST", "/portal/devices/bulk-actions", "user_id"): "its list filter, over devices in scope, as above",
    # A report of a policy's devices: it writes the ids of the devices in the caller's scope, takes none.
    (
        "GET",
        "/api/v1/compliance-policies/{policy_id}/devices.csv",
        "device_id",
    ): "lists the devices in scope (it writes device ids, takes none)",
    (
        "GET",
        "/api/v1/configuration-profiles/{profile_id}/devices.csv",
        "device_id",
    ): "lists the devices in scope (it writes device ids, takes none)",
    # Role assignments: who holds which role is the roles:read and roles:assign holders' business; their
    # members are named to every roles:read holder (GET /api/v1/role-assignments), whatever their scope.
    ("POST", "/api/v1/role-assignments", "member_ids"): "role assignments name their members to roles:read",
    ("PUT", "/api/v1/role-assignments/{assignment_id}/members", "member_ids"): "as above",
    ("POST", "/portal/role-assignments/new", "member_ids"): "as above (the admin center's form)",
}


# ------------------------------------------------------------------------------------------- the world
@dataclass
class Subject:
    """A user or device a probe names: its id and the name a lookup would use; for devices, a queued
    command (to cancel) and a wipe waiting for approval (to approve or reject)."""

    id: str
    name: str
    queued: str = ""
    pending: str = ""

    @property
    def secrets(self) -> list[str]:
        return [s for s in (self.id, self.name, self.queued, self.pending) if s]


Reach = Literal["group", "tag"]


@dataclass
class Caller:
    """A Global administrator whose role assignment is limited to one scope group (Paris) or one scope tag
    (Kiosks): through their API token and signed in to the admin center."""

    admin: Admin
    api: httpx.AsyncClient
    browser: httpx.AsyncClient
    csrf: str


@dataclass
class World:
    sessionmaker: async_sessionmaker[AsyncSession]
    factory: Factory
    root: Admin
    callers: dict[Reach, Caller]
    paris: str
    kiosks: str  # a scope tag
    extra: str  # an assigned group to add members to
    user_rule: str  # dynamic groups, for "does this user / device match?"
    device_rule: str
    licence: str

    async def user(self, inside: bool) -> Subject:
        upn = f"probe-{uuid.uuid4().hex[:10]}@example.com"
        user_id = await self.factory.user(upn, department="Probes")
        if inside:
            async with self.sessionmaker() as session:
                await session.execute(
                    insert(group_users).values(group_id=uuid.UUID(self.paris), user_id=user_id)
                )
                await session.commit()
        return Subject(str(user_id), upn)

    async def device(self, inside: bool, reach: Reach = "group") -> Subject:
        """A device in Paris (or tagged Kiosks), or in neither."""
        name = f"probe-{uuid.uuid4().hex[:10]}"
        (device_id,) = await insert_devices(self.sessionmaker, [{"name": name}])
        now = datetime.now(UTC)
        commands = {
            "queued": {"type": "sync", "status": CommandStatus.queued},
            "pending": {"type": "wipe", "status": CommandStatus.pending_approval, "reason": "Stolen laptop"},
        }
        ids = {key: uuid.uuid4() for key in commands}
        async with self.sessionmaker() as session:
            if inside and reach == "group":
                await session.execute(
                    insert(group_devices).values(group_id=uuid.UUID(self.paris), device_id=device_id)
                )
            elif inside:
                await session.execute(
                    insert(device_scope_tags).values(scope_tag_id=uuid.UUID(self.kiosks), device_id=device_id)
                )
            for key, values in commands.items():
                await session.execute(
                    insert(DeviceCommand).values(
                        id=ids[key],
                        device_id=device_id,
                        params={},
                        requested_by_id=self.root.id,
                        requested_by_name=self.root.email,
                        created_at=now,
                        expires_at=now + timedelta(days=1),
                        **values,
                    )
                )
            await session.commit()
        return Subject(str(device_id), name, str(ids["queued"]), str(ids["pending"]))


def nobody(kind: str) -> Subject:
    """An id (and name, and commands) nobody ever used."""
    prefix = "probe-" + uuid.uuid4().hex[:10]
    if kind == "user":
        return Subject(str(uuid.uuid4()), f"{prefix}@example.com")
    return Subject(str(uuid.uuid4()), prefix, str(uuid.uuid4()), str(uuid.uuid4()))


@pytest.fixture(scope="module")
async def world(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    settings = make_settings(tmp_path_factory.mktemp("scope"), module_db_url)
    engine = create_engine(module_db_url, pool_size=2, max_overflow=0)
    sessionmaker = create_sessionmaker(engine)
    factory = Factory(sessionmaker)
    async with running_app(settings, module_db_url) as app, new_client(app) as setup:
        root = await factory.admin("Global administrator")

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            response = await setup.post(path, json=body, headers=root.headers)
            assert response.status_code == 201, response.text
            created: dict[str, Any] = response.json()
            return created

        paris = (await create_group(setup, root, "Paris"))["id"]
        kiosks = (await post("/api/v1/scope-tags", {"name": "Kiosks"}))["id"]
        extra = (await create_group(setup, root, "Extra"))["id"]
        user_rule = (
            await dynamic_group(setup, root, "Probed users", 'user.department -eq "Probes"', "user")
        )["id"]
        device_rule = (
            await dynamic_group(setup, root, "Probed devices", 'device.displayName -startsWith "probe-"')
        )["id"]
        licence = (await post("/api/v1/licences", {"name": "Probe suite", "sku": "PROBE", "seats": 100_000}))[
            "id"
        ]
        global_role = await role_id(setup, root, "Global administrator")
        callers: dict[Reach, Caller] = {}
        async with AsyncExitStack() as stack:
            for reach, scope in (
                ("group", {"scope_group_ids": [paris]}),
                ("tag", {"scope_all": False, "scope_tag_ids": [kiosks]}),
            ):
                person = await factory.admin(None, token=False)
                granted = await assign(setup, root, global_role, person.id, **scope)
                assert granted.status_code == 201, granted.text
                person.token = await issue_token(sessionmaker, person.id)
                api = await stack.enter_async_context(new_client(app))
                api.headers["Authorization"] = f"Bearer {person.token}"
                browser = await stack.enter_async_context(new_client(app))
                assert (await sign_in(browser, person.email)).status_code == 303
                page = await browser.get("/portal/account")
                csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
                assert csrf is not None
                callers[reach] = Caller(person, api, browser, csrf.group(1))
            yield World(
                sessionmaker, factory, root, callers, paris, kiosks, extra, user_rule, device_rule, licence
            )
    await engine.dispose()


# ------------------------------------------------------------------------------------------- probes
Body = Callable[[World, Subject], dict[str, Any]]


@dataclass(frozen=True)
class Probe:
    method: str
    path: str
    field: str  # the detected field it exercises
    kind: Literal["user", "device"]
    json: Body | None = None
    form: Body | None = None
    query: Body | None = None
    # Values for the path's other parameters.
    values: Callable[[World, Subject], dict[str, str]] = lambda w, s: {}
    # Refused within a successful answer: a bulk action lists the id as skipped ("No such device."), a form
    # page shows "No user called … that you can see" next to the field.
    inline: bool = False

    @property
    def id(self) -> str:
        return f"{self.method} {self.path} [{self.field}, {self.kind}]"

    def request(
        self, w: World, caller: Caller, s: Subject
    ) -> tuple[httpx.AsyncClient, str, str, dict[str, Any]]:
        path = self.path.replace("{user_id}", s.id).replace("{device_id}", s.id)
        for name, value in self.values(w, s).items():
            path = path.replace("{" + name + "}", value)
        assert "{" not in path, path
        kwargs: dict[str, Any] = {}
        if self.json is not None:
            kwargs["json"] = self.json(w, s)
        if self.query is not None:
            kwargs["params"] = self.query(w, s)
        portal = path.startswith("/portal")
        if portal and self.method != "GET":
            kwargs["data"] = {"csrf_token": caller.csrf, **(self.form(w, s) if self.form else {})}
        return (caller.browser if portal else caller.api), self.method, path, kwargs


def _p(method: str, path: str, kind: Literal["user", "device"], **options: Any) -> Probe:
    field = options.pop("field", f"{kind}_id")
    return Probe(method, path, field, kind, **options)


LICENCE = {"values": lambda w, s: {"licence_id": w.licence}}
QUEUED = {"values": lambda w, s: {"command_id": s.queued}}
PENDING = {"values": lambda w, s: {"command_id": s.pending}}
EXTRA = {"values": lambda w, s: {"group_id": w.extra}}
PARAMS = {
    "rename": {"name": "Renamed"},
    "lost_mode_on": {"message": "Call the help desk"},
    "notify": {"message": "Please update"},
}


def action(name: str) -> Body:
    return lambda w, s: {
        "params": PARAMS.get(name, {}),
        "reason": "Ticket 4711 for the probe",
        "confirm": s.name,
    }


def portal_action(name: str) -> Body:
    return lambda w, s: {**PARAMS.get(name, {}), "reason": "Ticket 4711 for the probe", "confirm": s.name}


def explain(kind: str, by: str) -> Body:
    rules = {"user": 'user.department -eq "Probes"', "device": 'device.displayName -startsWith "probe-"'}
    return lambda w, s: {"dynamic_kind": kind, "rule": rules[kind], by: s.name if by == "lookup" else s.id}


def rule_form(kind: str) -> Body:
    rules = {"user": 'user.department -eq "Probes"', "device": 'device.displayName -startsWith "probe-"'}
    return lambda w, s: {
        "display_name": "Tried",
        "membership_type": "dynamic",
        "dynamic_kind": kind,
        "rule": rules[kind],
        "action": "explain",
        "explain_lookup": s.name,
    }


U = "/api/v1/users/{user_id}"
D = "/api/v1/devices/{device_id}"
PU = "/portal/users/{user_id}"
PD = "/portal/devices/{device_id}"
PROBES: list[Probe] = [
    # ---- API: users
    _p("GET", U, "user"),
    _p("PATCH", U, "user", json=lambda w, s: {"job_title": "Engineer"}),
    _p("DELETE", U, "user"),
    _p("POST", f"{U}/password-reset", "user"),
    _p("GET", f"{U}/effective-permissions", "user"),
    _p("GET", f"{U}/groups", "user"),
    _p("GET", f"{U}/licences", "user"),
    _p("POST", f"{U}/licences/{{licence_id}}", "user", **LICENCE),
    _p("DELETE", f"{U}/licences/{{licence_id}}", "user", **LICENCE),
    _p(
        "POST",
        "/api/v1/enrollment-tokens",
        "user",
        json=lambda w, s: {
            "name": "Probe",
            "platforms": ["windows"],
            "ownership": "company",
            "user_id": s.id,
        },
    ),
    # ---- API: devices
    _p("GET", D, "device"),
    _p("PATCH", D, "device", json=lambda w, s: {"ownership": "personal"}),
    _p("DELETE", D, "device"),
    _p("GET", f"{D}/who-can/{{action}}", "device", values=lambda w, s: {"action": "wipe"}),
    _p("GET", f"{D}/inventory-history", "device"),
    _p("GET", f"{D}/apps", "device"),
    _p("GET", f"{D}/commands", "device"),
    _p("GET", f"{D}/groups", "device"),
    _p("GET", f"{D}/assignments", "device"),
    _p("GET", f"{D}/configuration", "device"),
    _p("GET", f"{D}/compliance", "device"),
    _p("GET", f"{D}/compliance/history", "device"),
    _p(
        "PUT",
        f"{D}/compliance/override",
        "device",
        json=lambda w, s: {
            "until": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "reason": "Probe override",
        },
    ),
    _p("DELETE", f"{D}/compliance/override", "device"),
    # The device is looked up (and scoped) before the object: an object that does not exist tells them apart.
    _p(
        "GET",
        f"{D}/assignments/{{object_id}}/explain",
        "device",
        values=lambda w, s: {"object_id": str(uuid.UUID(int=7))},
    ),
    _p("POST", f"{D}/commands/{{command_id}}/cancel", "device", **QUEUED),
    _p("POST", f"{D}/commands/clear", "device"),
    _p(
        "POST",
        f"{D}/commands/{{command_id}}/approve",
        "device",
        json=lambda w, s: {"comment": "ok"},
        **PENDING,
    ),
    _p(
        "POST",
        f"{D}/commands/{{command_id}}/reject",
        "device",
        json=lambda w, s: {"reason": "Not this one"},
        **PENDING,
    ),
    *[_p("POST", f"{D}/actions/{name}", "device", json=action(name)) for name in REGISTRY],
    _p(
        "POST",
        "/api/v1/devices/bulk-actions",
        "device",
        field="device_ids",
        json=lambda w, s: {"type": "sync", "device_ids": [s.id]},
        inline=True,
    ),
    # ---- API: groups (ids and names in the body)
    _p("POST", "/api/v1/groups/preview/explain", "user", json=explain("user", "user_id")),
    _p("POST", "/api/v1/groups/preview/explain", "device", json=explain("device", "device_id")),
    _p("POST", "/api/v1/groups/preview/explain", "user", field="lookup", json=explain("user", "lookup")),
    _p("POST", "/api/v1/groups/preview/explain", "device", field="lookup", json=explain("device", "lookup")),
    *[
        _p(
            method,
            "/api/v1/groups/{group_id}/members",
            kind,
            field=MEMBER,
            json=lambda w, s, kind=kind: {"type": kind, "id": s.id},
            **EXTRA,
        )
        for method in ("POST", "DELETE")
        for kind in ("user", "device")
    ],
    # ---- admin center: administrators and users
    _p("GET", "/portal/admins/{user_id}", "user"),
    _p("GET", "/portal/admins/{user_id}/credentials", "user"),
    _p("POST", "/portal/admins/{user_id}/enabled", "user", form=lambda w, s: {"enabled": "false"}),
    _p("POST", "/portal/admins/{user_id}/password-reset", "user"),
    _p("GET", PU, "user"),
    _p("GET", f"{PU}/edit", "user"),
    _p(
        "POST",
        f"{PU}/edit",
        "user",
        form=lambda w, s: {"user_principal_name": s.name, "display_name": "Edited"},
    ),
    _p("POST", f"{PU}/enabled", "user", form=lambda w, s: {"enabled": "false"}),
    _p("POST", f"{PU}/delete", "user"),
    _p("POST", f"{PU}/licences", "user", form=lambda w, s: {"licence_id": w.licence}),
    _p("POST", f"{PU}/licences/{{licence_id}}/remove", "user", **LICENCE),
    # ---- admin center: devices
    _p("GET", PD, "device"),
    _p("GET", f"{PD}/why", "device"),
    _p("GET", f"{PD}/who-can", "device", query=lambda w, s: {"action": "wipe"}),
    _p("POST", f"{PD}/commands/{{command_id}}/cancel", "device", **QUEUED),
    _p("POST", f"{PD}/commands/clear", "device"),
    _p(
        "POST",
        f"{PD}/compliance/override",
        "device",
        form=lambda w, s: {
            "until": (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
            "reason": "Probe override",
        },
    ),
    _p(
        "POST",
        f"{PD}/commands/{{command_id}}/approve",
        "device",
        form=lambda w, s: {"comment": "ok"},
        **PENDING,
    ),
    _p(
        "POST",
        f"{PD}/commands/{{command_id}}/reject",
        "device",
        form=lambda w, s: {"reason": "Not this one"},
        **PENDING,
    ),
    _p(
        "POST",
        f"{PD}/delete",
        "device",
        form=lambda w, s: {"reason": "Sold to a reseller", "confirm": s.name},
    ),
    *[_p("POST", f"{PD}/actions/{name}", "device", form=portal_action(name)) for name in REGISTRY],
    _p(
        "POST",
        "/portal/devices/bulk-actions",
        "device",
        field="device_ids",
        form=lambda w, s: {"type": "sync", "device_ids": s.id},
        inline=True,
    ),
    # ---- admin center: groups (names and ids in forms)
    *[
        _p(
            "POST",
            "/portal/groups/{group_id}/members",
            kind,
            field="lookup",
            form=lambda w, s, kind=kind: {"type": kind, "lookup": s.name},
            **EXTRA,
        )
        for kind in ("user", "device")
    ],
    *[
        _p(
            "POST",
            "/portal/groups/{group_id}/members/remove",
            kind,
            field=MEMBER,
            form=lambda w, s, kind=kind: {"type": kind, "id": s.id},
            **EXTRA,
        )
        for kind in ("user", "device")
    ],
    *[
        _p(
            "POST",
            "/portal/groups/{group_id}/check",
            kind,
            field="explain_lookup",
            form=lambda w, s: {"explain_lookup": s.name},
            inline=True,
            values=lambda w, s, kind=kind: {"group_id": w.user_rule if kind == "user" else w.device_rule},
        )
        for kind in ("user", "device")
    ],
    *[
        _p("POST", "/portal/groups/new", kind, field="explain_lookup", form=rule_form(kind), inline=True)
        for kind in ("user", "device")
    ],
    *[
        _p(
            "POST",
            "/portal/groups/{group_id}/edit",
            kind,
            field="explain_lookup",
            form=rule_form(kind),
            inline=True,
            values=lambda w, s, kind=kind: {"group_id": w.user_rule if kind == "user" else w.device_rule},
        )
        for kind in ("user", "device")
    ],
]


# -------------------------------------------------------------------------------------------- answers
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")
VOLATILE = [
    (re.compile(r'"correlation_id":\s*"[^"]*"'), '"correlation_id":"-"'),
    (re.compile(r'(nonce|value)="[^"]*"'), r'\1="-"'),
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2}| UTC)?"), "<time>"),
    (re.compile(r"\d{13}"), "<ms>"),
]


def flash(response: httpx.Response) -> dict[str, str] | None:
    for header in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        if FLASH_COOKIE in cookie and cookie[FLASH_COOKIE].value:
            payload = cookie[FLASH_COOKIE].value.partition(".")[2]
            data: dict[str, str] = json.loads(payload)
            return data
    return None


def answer(response: httpx.Response, subject: Subject) -> tuple[Any, ...]:
    """What a caller learns from a response, with the subject's own id and name (and what changes between
    two requests: times, correlation ids, fresh object ids) taken out."""

    def clean(text: str) -> str:
        for secret in subject.secrets:
            text = text.replace(secret, "<subject>")
        for pattern, replacement in VOLATILE:
            text = pattern.sub(replacement, text)
        return UUID.sub("<uuid>", text)

    told = flash(response)
    return (
        response.status_code,
        clean(response.headers.get("location", "")),
        clean(json.dumps(told)) if told else None,
        clean(response.text),
    )


def refused(response: httpx.Response) -> bool:
    told = flash(response)
    return response.status_code >= 400 or (
        response.status_code == 303 and told is not None and told["k"] == "error"
    )


# ------------------------------------------------------------------------------------------- the tests
# A new route of each shape, for the detection's own test (module level: FastAPI resolves annotations there).
class _Filter(BaseModel):
    device_id: uuid.UUID | None = None


class _Ref(BaseModel):
    type: MemberType
    id: uuid.UUID


class _Body(BaseModel):
    refs: list[_Ref]


class _DeviceOut(BaseModel):  # an output: carries ids out
    device_id: uuid.UUID


def test_every_route_taking_a_user_or_device_id_is_probed() -> None:
    found = detected(ROUTES)
    probed = {(p.method, p.path, p.field) for p in PROBES}
    missing = sorted(found - probed - set(ALLOWED))
    assert not missing, (
        f"routes taking a user or device id with no scope probe (add one, or to ALLOWED): {missing}"
    )
    stale = sorted((probed | set(ALLOWED)) - found)
    assert not stale, f"probes or exceptions for routes that take no such id (any more): {stale}"
    assert not probed & set(ALLOWED), "a route is both probed and excused"


def test_the_detection_finds_ids_in_paths_queries_bodies_and_hand_read_forms() -> None:
    """The completeness test above is only as good as this: a new route of each shape is found."""

    app = FastAPI()

    @app.get("/a/{user_id}")
    async def by_path(user_id: uuid.UUID) -> None: ...

    @app.get("/b")
    async def by_query(filters: typing.Annotated[_Filter, Query()]) -> None: ...

    @app.post("/c")
    async def by_body(data: _Body) -> None: ...

    @app.post("/d")
    async def by_form(lookup: typing.Annotated[str, Form()]) -> None: ...

    @app.post("/e")
    async def by_hand(request: Request) -> _DeviceOut:
        form = await request.form()
        return _DeviceOut(device_id=uuid.UUID(str(form.get("device_ids"))))

    @app.get("/f")
    async def nothing() -> _DeviceOut:
        return _DeviceOut(device_id=uuid.uuid4())

    found = {(m, info.path): id_fields(info) for info in api_routes(app) for m in info.methods}
    assert found == {
        ("GET", "/a/{user_id}"): {"user_id"},
        ("GET", "/b"): {"device_id"},
        ("POST", "/c"): {MEMBER},
        ("POST", "/d"): {"lookup"},
        ("POST", "/e"): {"device_ids"},
        ("GET", "/f"): set(),
    }


# Users carry no scope tags: only scope groups leave users out, so user probes run for the group-limited
# caller alone; device probes run for both.
CASES = [
    (probe, reach)
    for probe in PROBES
    for reach in ("group", "tag")
    if probe.kind == "device" or reach == "group"
]


@pytest.mark.parametrize(("probe", "reach"), CASES, ids=[f"{p.id} by {r}" for p, r in CASES])
async def test_outside_scope_is_answered_as_never_existed(world: World, probe: Probe, reach: Reach) -> None:
    caller = world.callers[reach]
    if probe.kind == "user":
        outside, inside = await world.user(False), await world.user(True)
    else:
        outside, inside = await world.device(False, reach), await world.device(True, reach)
    missing = nobody(probe.kind)

    async def ask(subject: Subject) -> httpx.Response:
        client, method, path, kwargs = probe.request(world, caller, subject)
        # What an earlier request left for the next page (a flash message, a one-time password) is not
        # this request's answer.
        for cookie in [c for c in client.cookies.jar if c.name in (FLASH_COOKIE, REVEAL_COOKIE)]:
            client.cookies.jar.clear(cookie.domain, cookie.path, cookie.name)
        return await client.request(method, path, **kwargs)

    # Outside first, then never used, then inside (which may change or delete it).
    out, none = await ask(outside), await ask(missing)
    assert probe.inline or refused(none), (
        f"{probe.id}: an id never used was not refused: {none.status_code} {none.text[:300]}"
    )
    assert none.status_code != 500 and out.status_code != 500
    seen_out, seen_none = answer(out, outside), answer(none, missing)
    assert seen_out == seen_none, (
        f"{probe.id}: outside the caller's scope answers differently from an id never used "
        f"(status, location, flash: {seen_out[:3]} / {seen_none[:3]}):\n"
        + "\n".join(
            difflib.unified_diff(seen_none[3].splitlines(), seen_out[3].splitlines(), lineterm="", n=1)
        )
    )
    within = await ask(inside)
    assert within.status_code != 500, within.text
    assert answer(within, inside) != answer(none, missing), (
        f"{probe.id}: inside the caller's scope answers as an id never used: the probe proves nothing "
        f"({within.status_code} {within.text[:300]})"
    )
