"""S5: the admin center's big lists at scale, each request against the same SQL run raw, in the same run.

    .venv/bin/python bench/admin_lists.py [--devices 1000000] [--users 1000000] [--audit 10000000]
                                          [--members 100000] [--runs 30] [--only devices,users,audit,members]

Generates the data set-based with realistic shapes (platform mix, names as devices and people have them,
serial numbers, check-ins mostly recent, a few stale; users from a directory; a year of audit events; one
group with ``--members`` devices). Then, for each list (filter, search, sort by each sortable column, page 1
and page 1000 by keyset), times the API request through ``corral serve --http`` (a Global administrator's
API token, one request at a time) and the same statements the server runs for it, compiled by SQLAlchemy's
asyncpg dialect and sent with their values over asyncpg (the total, the rows, and for devices the page's
scope tags). Requests and raw runs alternate, so both see the same machine. Targets: API p95 at most
1.5 x raw p95 + 20 ms, and page 1000 at most 1.2 x page 1.

Also: a CSV export of every device, streamed, with the server's resident memory sampled throughout.

Uses CORRAL_DATABASE_URL's server or a throwaway embedded PostgreSQL; everything on loopback; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from common import admin_token, database, percentile, servers, start_corral
from sqlalchemy import Select
from sqlalchemy.dialects import postgresql

from corral.audit import repository as audit_repository
from corral.audit.schemas import AuditFilter
from corral.devices import repository as devices_repository
from corral.devices.schemas import DeviceFilter
from corral.kit import pagination
from corral.kit.pagination import COUNT_EXACTLY_UP_TO, encode_cursor
from corral.rbac.principal import EVERYWHERE
from corral.users import repository as users_repository
from corral.users.schemas import UserFilter

DIALECT = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
PAGE = 50
DEEP = 1000  # the "page 1000" of the target (--deep)


Statement = tuple[Any, ...]  # the SQL text, then its values: conn.fetch(*statement)


def raw(stmt: Select[Any]) -> Statement:
    """The statement as the server sends it (SQLAlchemy's asyncpg dialect) and its values."""
    compiled = stmt.compile(dialect=DIALECT)
    params = compiled.construct_params()
    processors = compiled._bind_processors
    names = compiled.positiontup or []
    return (str(compiled), *(processors[n](params[n]) if n in processors else params[n] for n in names))


# ------------------------------------------------------------------------------------------------ data
FIRST = (  # noqa: SIM905
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan "
    "Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew Betty Anthony Sandra "
    "Mark Margaret Donald Ashley Steven Kimberly Andrew Emily Paul Donna Joshua Michelle Kenneth Carol "
    "Kevin Amanda Brian Melissa George Deborah Timothy Stephanie Ronald Rebecca Jason Sharon Edward Laura "
    "Jeffrey Cynthia Ryan Amy Jacob Kathleen Gary Angela Nicholas Shirley Eric Brenda Jonathan Emma "
    "Stephen Anna Larry Pamela Justin Nicole Scott Samantha Brandon Katherine Benjamin Christine Samuel "
    "Helen Gregory Debra Alexander Rachel Frank Carolyn Patrick Janet Raymond Maria Jack Olivia Dennis "
    "Heather Jerry Diane Tyler Julie Aaron Joyce José Zoë Björn Søren Łukasz Émilie Chloé Noémie Jürgen "
    "Renée"
).split()
LAST = (  # noqa: SIM905
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez "
    "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark "
    "Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams "
    "Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker "
    "Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper "
    "Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James "
    "Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez "
    "Müller Schmidt Dubois Rossi Kowalski Andersson Jensen Novák Horváth Yilmaz Ivanova Tanaka Suzuki "
    "Wang Li Zhang Chen Singh Kumar Okafor Mensah"
).split()
DEPARTMENTS = (  # noqa: SIM905
    "Sales,Marketing,Finance,Engineering,Support,Operations,Legal,HR,IT,Research,Design,Procurement,Logis"
    "tics,Facilities,Security,Quality,Manufacturing,Customer Success,Product,Data,Training,Communications"
    ",Audit,Risk,Executive"
).split(",")
ACTIVITIES = [
    ("device", "device.lock"),
    ("device", "device.wipe"),
    ("device", "device.retire"),
    ("device", "device.sync"),
    ("device", "device.rename"),
    ("device", "device.update"),
    ("device", "device.enroll"),
    ("device", "device.refused"),
    ("policy", "compliance_policy.create"),
    ("policy", "compliance_policy.update"),
    ("policy", "configuration_profile.update"),
    ("policy", "assignment.update"),
    ("user", "user.create"),
    ("user", "user.update"),
    ("user", "user.disable"),
    ("group", "group.member_add"),
    ("group", "group.update"),
    ("role", "role_assignment.create"),
    ("authentication", "signin"),
    ("authentication", "signout"),
]


async def generate_users(conn: asyncpg.Connection, count: int) -> None:
    """``count`` directory users: names repeat as people's do, sign-in names are unique."""
    await conn.execute(
        """
        INSERT INTO users (id, user_principal_name, email, display_name, given_name, surname, department,
                           job_title, source, enabled, must_change_password, known_clients_generation,
                           created_at, updated_at, last_sign_in_at)
        SELECT gen_random_uuid(), u.upn, u.upn, u.first || ' ' || u.last, u.first, u.last,
               ($3::text[])[1 + (g * 7) % cardinality($3::text[])], 'Employee',
               CASE WHEN g % 10 < 7 THEN 'scim' WHEN g % 10 < 9 THEN 'oidc' ELSE 'local' END,
               g % 20 <> 0, false, 0, u.created, u.created,
               CASE WHEN g % 5 < 3 THEN now() - random() ^ 3 * interval '90 days' END
        FROM generate_series(1, $4) AS g,
             LATERAL (SELECT ($1::text[])[1 + (g * 31) % cardinality($1::text[])] AS first,
                             ($2::text[])[1 + (g * 17 + g / 97) % cardinality($2::text[])] AS last,
                             now() - random() * interval '1500 days' AS created) AS n,
             LATERAL (SELECT n.first, n.last, n.created,
                             lower(translate(n.first || '.' || n.last, 'éëöøłüçóáÉ', 'eeoolucoaE')) || g
                             || '@contoso.example' AS upn) AS u
        """,
        FIRST,
        LAST,
        DEPARTMENTS,
        count,
    )


async def generate_devices(conn: asyncpg.Connection, count: int) -> None:
    """``count`` devices named as their platforms name them, each enrolled for one of the users."""
    await conn.execute(
        """
        CREATE TEMP TABLE numbered_users AS
        SELECT row_number() OVER (ORDER BY id) AS n, id, user_principal_name, given_name FROM users;
        CREATE INDEX ON numbered_users (n);
        """
    )
    users = await conn.fetchval("SELECT count(*) FROM numbered_users")
    await conn.execute(
        """
        INSERT INTO devices (id, name, serial_number, platform, os_version, model, manufacturer, ownership,
                             management_state, compliance_state, user_id, primary_user, enrolled_at,
                             last_checkin_at, inventory, created_at, updated_at)
        SELECT gen_random_uuid(),
               CASE p.platform
                 WHEN 'windows' THEN 'DESKTOP-' || upper(substr(md5('n' || g), 1, 7))
                 WHEN 'macos' THEN u.given_name || '''s MacBook ' || (ARRAY['Pro', 'Air'])[1 + g % 2]
                 WHEN 'ios' THEN u.given_name || '''s iPhone'
                 WHEN 'ipados' THEN u.given_name || '''s iPad'
                 WHEN 'android' THEN (ARRAY['Pixel 8', 'Galaxy S23', 'Galaxy A54', 'Pixel 7a'])[1 + g % 4]
                                     || ' ' || upper(substr(md5('n' || g), 1, 4))
                 ELSE 'ws-' || substr(md5('n' || g), 1, 6)
               END,
               upper(substr(md5('s' || g), 1, 12)), p.platform, '14.2', 'Model', 'Maker',
               CASE WHEN g % 5 = 0 THEN 'personal' ELSE 'company' END,
               CASE WHEN g % 50 = 0 THEN 'retired' ELSE 'managed' END,
               CASE WHEN r < 0.78 THEN 'compliant' WHEN r < 0.90 THEN 'noncompliant'
                    WHEN r < 0.93 THEN 'in_grace_period' WHEN r < 0.98 THEN 'unknown'
                    ELSE 'not_evaluated' END,
               u.id, u.user_principal_name, e.enrolled,
               CASE WHEN g % 20 <> 0 THEN greatest(e.enrolled, now() - random() ^ 4 * interval '60 days') END,
               '{}'::jsonb, e.enrolled, e.enrolled
        FROM generate_series(1, $1) AS g
        -- (g in it: a lateral subquery that does not refer to the row is evaluated once for all rows)
        CROSS JOIN LATERAL (SELECT random() + 0 * g AS r,
                                   now() - (random() + 0 * g) * interval '1000 days' AS enrolled) AS e
        CROSS JOIN LATERAL (
            SELECT CASE WHEN g % 100 < 45 THEN 'windows' WHEN g % 100 < 57 THEN 'macos'
                        WHEN g % 100 < 77 THEN 'ios' WHEN g % 100 < 82 THEN 'ipados'
                        WHEN g % 100 < 97 THEN 'android' ELSE 'linux' END AS platform) AS p
        JOIN numbered_users AS u ON u.n = 1 + (g::bigint * 7919) % $2
        """,
        count,
        users,
    )
    await conn.execute("DROP TABLE numbered_users")


async def generate_audit(conn: asyncpg.Connection, count: int) -> None:
    """``count`` events over a year, oldest first, in batches of a million."""
    activities = [a for _, a in ACTIVITIES]
    categories = [c for c, _ in ACTIVITIES]
    batch = 1_000_000
    for start in range(0, count, batch):
        await conn.execute(
            """
            INSERT INTO audit_events (id, occurred_at, category, activity, operation, result, actor_type,
                                      actor_id, actor_name, target_type, target_id, target_name,
                                      modified_properties, detail, correlation_id, ip_address, user_agent)
            SELECT gen_random_uuid(), now() - interval '365 days' * (1 - g::float8 / $4), ($2::text[])[k],
                   ($1::text[])[k], 'update', CASE WHEN g % 40 = 0 THEN 'failure' ELSE 'success' END, 'user',
                   NULL, 'admin' || (g % 200) || '@contoso.example', 'device', md5('t' || (g % 500000)),
                   'DESKTOP-' || upper(substr(md5('t' || (g % 500000)), 1, 7)),
                   jsonb_build_array(jsonb_build_object('name', 'name', 'old', 'a', 'new', 'b')),
                   NULL, md5('c' || g), '10.0.' || (g % 250) || '.' || (g % 200), 'Mozilla/5.0'
            FROM generate_series($3::bigint + 1, $3::bigint + $5) AS g,
                 LATERAL (SELECT 1 + (g * 13 % cardinality($1::text[]))::int AS k) AS a
            """,
            activities,
            categories,
            start,
            count,
            min(batch, count - start),
        )


async def generate_group(conn: asyncpg.Connection, members: int) -> uuid.UUID:
    group_id = uuid.uuid4()
    await conn.execute(
        """
        INSERT INTO groups (id, display_name, description, membership_type, source, created_at, updated_at)
        VALUES ($1, 'All laptops', '', 'assigned', 'local', now(), now())
        """,
        group_id,
    )
    await conn.execute(
        "INSERT INTO group_devices (group_id, device_id) SELECT $1, id FROM devices ORDER BY id LIMIT $2",
        group_id,
        members,
    )
    return group_id


# --------------------------------------------------------------------------------------------- scenarios
@dataclass
class Scenario:
    kind: str
    label: str
    path: str
    params: dict[str, str]
    total: list[Statement]  # devices, users: the planner's estimate, the bounded count; members: the counts
    rows: list[Statement]
    # Run after the rows: the page's scope tags (the devices list loads them with the page).
    follow: Callable[[list[asyncpg.Record]], tuple[str, list[Any]] | None] | None = None
    api: list[float] = field(default_factory=list)
    sql: list[float] = field(default_factory=list)


def device_tags(rows: list[asyncpg.Record]) -> tuple[str, list[Any]] | None:
    ids = [r["id"] for r in rows]
    return (
        "SELECT d.device_id, s.* FROM device_scope_tags AS d JOIN scope_tags AS s ON s.id = d.scope_tag_id "
        "WHERE d.device_id = ANY($1::uuid[])",
        [ids],
    )


async def cursor_at(conn: asyncpg.Connection, rows_stmt: Select[Any], page: int) -> str:
    """The cursor that the API would hand out after page ``page - 1``: the sort key and id of its last row."""
    row = await conn.fetchrow(*raw(rows_stmt.limit(1).offset((page - 1) * PAGE - 1)))
    key = row[-1]
    return encode_cursor([key.isoformat() if hasattr(key, "isoformat") else key, str(row["id"])])


def total_statements(base: Select[Any]) -> list[Statement]:
    return [raw(s) for s in pagination.total_statements(base)]


async def device_scenarios(conn: asyncpg.Connection, stale_days: int) -> list[Scenario]:
    sample = await conn.fetchrow(
        "SELECT name, serial_number, primary_user FROM devices WHERE platform = 'windows' ORDER BY id LIMIT 1"
    )
    surname = (await conn.fetchval("SELECT surname FROM users ORDER BY id LIMIT 1")).lower()
    cases: list[tuple[str, dict[str, str]]] = [
        *((f"sort {s}", {"sort": s}) for s in DeviceFilter.model_fields["sort"].annotation.__args__),  # type: ignore[union-attr]
        ("filter platform=ios", {"platform": "ios"}),
        (
            "filter compliance=noncompliant, by last check-in",
            {"compliance_state": "noncompliant", "sort": "-last_checkin_at"},
        ),
        ("filter windows + in grace period", {"platform": "windows", "compliance_state": "in_grace_period"}),
        ("filter stale", {"stale": "true"}),
        ("filter personal, by enrolment", {"ownership": "personal", "sort": "-enrolled_at"}),
        ("search device name", {"search": sample["name"][:11]}),
        ("search serial number", {"search": sample["serial_number"][2:8]}),
        ("search user's surname", {"search": surname}),
        ("search user's sign-in name", {"search": sample["primary_user"].split("@")[0]}),
        ("search two letters (no trigram)", {"search": "ma"}),
    ]
    out: list[Scenario] = []
    for label, params in cases:
        filters = DeviceFilter(**params, limit=PAGE)
        base, rows = devices_repository.page_statements(filters, EVERYWHERE, stale_days)
        out.append(
            Scenario(
                "devices", label, "/api/v1/devices", params, total_statements(base), [raw(rows)], device_tags
            )
        )
    for sort in ("name", "-last_checkin_at"):
        filters = DeviceFilter(sort=sort, limit=PAGE)
        _base, rows = devices_repository.page_statements(filters, EVERYWHERE, stale_days)
        cursor = await cursor_at(conn, rows, DEEP)
        params = {"sort": sort, "cursor": cursor}
        base, rows = devices_repository.page_statements(
            DeviceFilter(**params, limit=PAGE), EVERYWHERE, stale_days
        )
        out.append(
            Scenario(
                "devices",
                f"page {DEEP}, sort {sort}",
                "/api/v1/devices",
                params,
                total_statements(base),
                [raw(rows)],
                device_tags,
            )
        )
    return out


async def user_scenarios(conn: asyncpg.Connection) -> list[Scenario]:
    sample = await conn.fetchrow("SELECT surname, user_principal_name FROM users ORDER BY id LIMIT 1")
    cases: list[tuple[str, dict[str, str]]] = [
        *((f"sort {s}", {"sort": s}) for s in UserFilter.model_fields["sort"].annotation.__args__),  # type: ignore[union-attr]
        ("filter department", {"department": DEPARTMENTS[3]}),
        ("filter disabled", {"enabled": "false"}),
        ("filter source=local", {"source": "local"}),
        ("search surname", {"search": sample["surname"]}),
        ("search sign-in name", {"search": sample["user_principal_name"].split("@")[0]}),
    ]
    out: list[Scenario] = []
    for label, params in cases:
        base, rows = users_repository.page_statements(UserFilter(**params, limit=PAGE), EVERYWHERE)
        out.append(Scenario("users", label, "/api/v1/users", params, total_statements(base), [raw(rows)]))
    for sort in ("display_name", "-last_sign_in_at"):
        _base, rows = users_repository.page_statements(UserFilter(sort=sort, limit=PAGE), EVERYWHERE)
        params = {"sort": sort, "cursor": await cursor_at(conn, rows, DEEP)}
        base, rows = users_repository.page_statements(UserFilter(**params, limit=PAGE), EVERYWHERE)
        out.append(
            Scenario(
                "users",
                f"page {DEEP}, sort {sort}",
                "/api/v1/users",
                params,
                total_statements(base),
                [raw(rows)],
            )
        )
    return out


async def audit_scenarios(conn: asyncpg.Connection) -> list[Scenario]:
    last = await conn.fetchval("SELECT max(seq) FROM audit_events")
    week_ago = await conn.fetchval("SELECT (now() - interval '7 days')::timestamptz")
    cases: list[tuple[str, dict[str, str]]] = [
        ("newest first", {}),
        (f"page {DEEP}", {"cursor": encode_cursor([last - (DEEP - 1) * PAGE])}),
        ("filter category=policy", {"category": "policy"}),
        ("filter activity=device.wipe", {"activity": "device.wipe"}),
        ("filter failures", {"result": "failure"}),
        ("filter actor contains", {"actor": "admin17@"}),
        (
            "filter one device",
            {"target_type": "device", "target_id": await conn.fetchval("SELECT md5('t1')")},
        ),
        ("filter the last week", {"since": week_ago.isoformat()}),
    ]
    out = []
    for label, params in cases:
        stmt = audit_repository.page_statement(AuditFilter(**params, limit=PAGE))
        out.append(Scenario("audit", label, "/api/v1/audit-events", params, [], [raw(stmt)]))
    return out


def member_statements(
    group_id: uuid.UUID, after: tuple[int, str, uuid.UUID] | None
) -> tuple[list[Select[Any]], list[Select[Any]]]:
    """The statements ``groups.repository.member_page`` runs for a direct member page (its private branches,
    read here so that the raw figure is the same SQL): one for the counts, then each branch's rows until the
    page is full (the generated group has devices only, so every branch is read)."""
    from sqlalchemy import select

    from corral.groups import repository as groups_repository

    branches = groups_repository._branches(group_id, [group_id], None, EVERYWHERE, EVERYWHERE)
    counts = select(*{id(e): e for b in branches for e in (b.count_all, b.count_visible)}.values())
    rows = [s for s in (groups_repository._after(b, after) for b in branches) if s is not None]
    return [counts], rows


async def member_scenarios(conn: asyncpg.Connection, group_id: uuid.UUID) -> list[Scenario]:
    total, rows = member_statements(group_id, None)
    last = await conn.fetchrow(*raw(rows[-1].limit(1).offset((DEEP - 1) * PAGE - 1)))
    after = (last["rank"], last["sort"], last["id"])
    deep_total, deep_rows = member_statements(group_id, after)
    path = f"/api/v1/groups/{group_id}/members"
    cursor = encode_cursor([after[0], after[1], str(after[2])])
    return [
        Scenario(
            "members", "page 1", path, {}, [raw(s) for s in total], [raw(s.limit(PAGE + 1)) for s in rows]
        ),
        Scenario(
            "members",
            f"page {DEEP}",
            path,
            {"cursor": cursor},
            [raw(s) for s in deep_total],
            [raw(s.limit(PAGE + 1)) for s in deep_rows],
        ),
    ]


# ------------------------------------------------------------------------------------------------ timing
async def time_sql(conn: asyncpg.Connection, scenario: Scenario) -> float:
    """The scenario's statements in the server's order. A group's members: the counts, then each kind's rows.
    Devices and users (kit.pagination.page_total): the rows; then, unless the first page was the whole list,
    the planner's estimate and, only when that is within the threshold, the bounded count; then, for devices,
    the page's scope tags."""
    start = time.perf_counter()
    rows: list[asyncpg.Record] = []
    if scenario.kind == "members":
        for statement in scenario.total:
            await conn.fetchval(*statement)
    for statement in scenario.rows:
        rows = await conn.fetch(*statement)
    whole = "cursor" not in scenario.params and len(rows) <= PAGE
    if scenario.kind != "members" and scenario.total and not whole:
        estimate, count = scenario.total
        if pagination.planned_rows(await conn.fetchval(*estimate)) <= COUNT_EXACTLY_UP_TO:
            await conn.fetchval(*count)
    if scenario.follow is not None and rows:
        follow = scenario.follow(rows[:PAGE])
        if follow is not None:
            await conn.fetch(follow[0], *follow[1])
    return time.perf_counter() - start


async def time_api(client: httpx.AsyncClient, scenario: Scenario) -> float:
    start = time.perf_counter()
    response = await client.get(scenario.path, params=scenario.params)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{scenario.label}: {response.status_code} {response.text[:300]}")
    return elapsed


async def measure(
    client: httpx.AsyncClient, conn: asyncpg.Connection, scenarios: list[Scenario], runs: int
) -> None:
    for scenario in scenarios:
        await time_api(client, scenario)  # warm: plans, caches, the connection
        await time_sql(conn, scenario)
        for _ in range(runs):
            scenario.api.append(await time_api(client, scenario))
            scenario.sql.append(await time_sql(conn, scenario))
        report(scenario)


def report(s: Scenario) -> None:
    api, sql = percentile(s.api, 95) * 1000, percentile(s.sql, 95) * 1000
    budget = 1.5 * sql + 20
    verdict = "met" if api <= budget else "MISSED"
    print(
        f"{s.kind:<8} {s.label:<48} API p50 {percentile(s.api, 50) * 1000:7.1f} p95 {api:7.1f} ms   raw SQL "
        f"p50 {percentile(s.sql, 50) * 1000:7.1f} p95 {sql:7.1f} ms   target ≤ {budget:7.1f}  {verdict}",
        flush=True,
    )


def deep_ratios(scenarios: list[Scenario]) -> None:
    by_label = {(s.kind, s.label): s for s in scenarios}
    for s in scenarios:
        if not s.label.startswith(f"page {DEEP}"):
            continue
        sort = s.label.partition("sort ")[2]
        first = by_label.get(
            (s.kind, f"sort {sort}" if sort else ("newest first" if s.kind == "audit" else "page 1"))
        )
        if first is None:
            continue
        ratio = percentile(s.api, 95) / percentile(first.api, 95)
        print(
            f"{s.kind:<8} page {DEEP} / page 1 ({sort or 'default order'}): API p95 ratio {ratio:.2f} "
            f"({'met' if ratio <= 1.2 else 'MISSED'}, target ≤ 1.2)",
            flush=True,
        )


async def export_memory(server_pid: int, base_url: str, token: str) -> None:
    """Download every device as CSV and sample the server's resident memory while it streams."""

    def rss() -> float:
        for line in Path(f"/proc/{server_pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    before, peak, size, rows = rss(), 0.0, 0, 0
    start = time.perf_counter()
    async with (
        httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=3600
        ) as client,
        client.stream("GET", "/api/v1/devices/export.csv") as response,
    ):
        if response.status_code != 200:
            raise RuntimeError(f"export: {response.status_code}")
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            rows += chunk.count(b"\n")
            peak = max(peak, rss())
    seconds = time.perf_counter() - start
    print(
        f"export   CSV of every device: {rows - 1:,} rows, {size / 2**20:.0f} MiB in {seconds:.1f} s; "
        f"server RSS {before:.0f} MiB before, peak {peak:.0f} MiB (+{peak - before:.0f})",
        flush=True,
    )


async def run(args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    db = await database("corral_bench_lists")
    data_dir = Path(tempfile.mkdtemp(prefix="corral-bench-lists-"))
    conn = await asyncpg.connect(db.url)
    try:
        started = time.perf_counter()
        await generate_users(conn, args.users)
        print(f"generated {args.users:,} users in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        await generate_devices(conn, args.devices)
        print(f"generated {args.devices:,} devices in {time.perf_counter() - started:.0f} s", flush=True)
        group_id = await generate_group(conn, min(args.members, args.devices))
        if "audit" in only and args.audit:
            started = time.perf_counter()
            await generate_audit(conn, args.audit)
            print(
                f"generated {args.audit:,} audit events in {time.perf_counter() - started:.0f} s", flush=True
            )
        started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")
        print(f"VACUUM ANALYZE in {time.perf_counter() - started:.0f} s", flush=True)
        token = admin_token(db.url, data_dir)
        server = start_corral(db.url, data_dir, {"CORRAL_EMBEDDED_WORKER": "false"})
        with servers(server):
            scenarios: list[Scenario] = []
            async with httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120
            ) as client:
                builders: list[tuple[str, Callable[[], Awaitable[list[Scenario]]]]] = [
                    ("devices", lambda: device_scenarios(conn, 30)),
                    ("users", lambda: user_scenarios(conn)),
                    ("audit", lambda: audit_scenarios(conn)),
                    ("members", lambda: member_scenarios(conn, group_id)),
                ]
                for name, build in builders:
                    if name not in only or (name == "audit" and not args.audit):
                        continue
                    found = await build()
                    await measure(client, conn, found, args.runs)
                    scenarios.extend(found)
            deep_ratios(scenarios)
            if "export" in only:
                await export_memory(server.process.pid, server.url, token)
    finally:
        await conn.close()
        if db.handle is not None:
            db.handle.cleanup()


def main() -> None:
    global DEEP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--audit", type=int, default=10_000_000)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--deep", type=int, default=DEEP, help="the deep page (1000; less for small sets)")
    parser.add_argument("--only", default="devices,users,audit,members,export")
    args = parser.parse_args()
    DEEP = args.deep
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
