"""Schemathesis over the whole admin API, from its OpenAPI document, with a Global administrator's API token:
a live server on loopback against this test's throw-away database, every check on. No server error, and no
answer the document does not describe (status, media type, headers, body schema, Allow, auth).

Bounded to about a minute on a quiet two-core machine: a fixed seed, few examples per operation, the coverage
phase once per request shape, two client processes. Widen it locally with CORRAL_SCHEMATHESIS_EXAMPLES=100
(and CORRAL_SCHEMATHESIS_SEED, CORRAL_SCHEMATHESIS_PHASES)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Factory
from tests.live import LiveServer, free_port, start_live_server

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES = int(os.environ.get("CORRAL_SCHEMATHESIS_EXAMPLES", "5"))
SEED = int(os.environ.get("CORRAL_SCHEMATHESIS_SEED", "20261203"))
PHASES = os.environ.get("CORRAL_SCHEMATHESIS_PHASES", "examples,coverage,fuzzing,stateful")
# Operations that would revoke the run's own credentials; nothing else is left out:
# - DELETE /api/v1/api-tokens/{token_id}: the stateful phase learns token ids and could revoke the token the
#   whole run authenticates with. (Disabling or deleting yourself, resetting your own password, removing the
#   last Global administrator or changing a built-in role are refused by the server, and tested as such.)
EXCLUDED = [("DELETE", "/api/v1/api-tokens/{token_id}")]
# "Data valid by the schema is accepted": schemathesis' default statuses, plus
# - 422, the answer to a rule the schema cannot state (a reference to an object that does not exist, a group
#   rule that does not parse, an identity provider that cannot be reached, exactly one of three fields);
# - 400 where a pagination cursor is taken: a cursor is opaque, only the server's own next_cursor is valid.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]


@pytest.fixture
def live(tmp_path: Path, db_url: str) -> Iterator[LiveServer]:
    server = start_live_server(tmp_path, db_url)
    yield server
    server.stop()


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them read the same in TOML


def coverage_once(document: dict[str, Any]) -> list[str]:
    """Operations whose request has the shape of one covered before (the same parameters and body: the
    remote actions share one request schema, each CSV export takes its list's filters, most operations on
    one object take only its id). They still get the fuzzing and stateful phases; the coverage phase (every
    boundary and invalid value of every field, by far the longest) runs once per shape."""
    seen: set[str] = set()
    repeated = []
    for path, item in sorted(document["paths"].items()):
        for method, operation in item.items():
            shape = json.dumps(
                [operation.get("parameters", []), operation.get("requestBody")], sort_keys=True
            )
            if shape in seen and (operation.get("parameters") or operation.get("requestBody")):
                repeated.append(f"{method.upper()} {path}")
            seen.add(shape)
    return repeated


def config(document: dict[str, Any]) -> str:
    """schemathesis.toml: the bounds, and 400 accepted for valid data only where a cursor is taken."""
    lines = [
        f"seed = {SEED}",
        "workers = 1",  # (hypothesis' lambda descriptions are not thread-safe on Python 3.11)
        "[generation]",
        f"max-examples = {EXAMPLES}",
        'database = "none"',
        "[output.sanitization]",
        "enabled = true",
        "[checks.positive_data_acceptance]",
        f"expected-statuses = {_toml(ACCEPTED)}",
    ]
    for name in coverage_once(document):
        lines += ["[[operations]]", f"include-name = {_toml(name)}", "phases.coverage.enabled = false"]
    for path, item in sorted(document["paths"].items()):
        for method, operation in item.items():
            if any(p["in"] == "query" and p["name"] == "cursor" for p in operation.get("parameters", [])):
                lines += [
                    "[[operations]]",
                    f"include-path = {_toml(path)}",
                    f"include-method = {_toml(method.upper())}",
                    f"checks.positive_data_acceptance.expected-statuses = {_toml([*ACCEPTED, '400'])}",
                ]
    return "\n".join(lines) + "\n"


async def run_schemathesis(
    url: str, token: str, config_file: Path, tags: list[str], out: Path, environment: dict[str, str]
) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        f"--config-file={config_file}",
        "--no-color",
        "run",
        f"{url}/api/v1/openapi.json",
        "--checks=all",
        f"--phases={PHASES}",
        *[f"--include-tag={tag}" for tag in tags],
        *[f"--exclude-name={method} {path}" for method, path in EXCLUDED],
        f"--header=Authorization: Bearer {token}",
        f"--report-dir={out}",
        cwd=out.parent,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=480)
    text = output.decode(errors="replace")
    out.with_suffix(".out").write_text(text)
    assert process.returncode is not None
    return process.returncode, text


def halves(document: dict[str, Any]) -> list[list[str]]:
    """The tags in two runs of about equal work (two processes: the server and one client would otherwise
    take turns on one core); an operation's links stay within its tag."""
    weights: dict[str, int] = {}
    for item in document["paths"].values():
        for operation in item.values():
            (tag,) = operation["tags"]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            weights[tag] = weights.get(tag, 0) + 1 + len(operation.get("parameters", [])) + (3 if body else 0)
    runs: list[list[str]] = [[], []]
    loads = [0, 0]
    for tag, weight in sorted(weights.items(), key=lambda item: (-item[1], item[0])):
        lighter = loads.index(min(loads))
        runs[lighter].append(tag)
        loads[lighter] += weight
    return runs


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    live: LiveServer, factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Generated identity connections make the server fetch their issuer's metadata: through a proxy that is
    # not there, so nothing leaves the machine and every such fetch fails at once (a 422, as offline).
    for variable in PROXY_VARIABLES:
        for name in (variable, variable.lower()):
            monkeypatch.delenv(name, raising=False)
    client_environment = dict(os.environ)
    nowhere = f"http://127.0.0.1:{free_port()}"
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(variable, nowhere)
    admin = await factory.admin()  # Global administrator, with an API token
    assert admin.token
    async with httpx.AsyncClient(base_url=live.url, trust_env=False) as http:
        document = (await http.get("/api/v1/openapi.json")).json()
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(config(document))
    before = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    results = await asyncio.gather(
        *(
            run_schemathesis(
                live.url, admin.token, config_file, tags, tmp_path / f"run-{n}", client_environment
            )
            for n, tags in enumerate(halves(document))
        )
    )
    after = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    cpu = [a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before, strict=True)]
    print(f"CPU seconds: server (this process) {cpu[0]:.1f}, schemathesis {cpu[1]:.1f}")
    tested = 0
    for returncode, out in results:
        summary = out[out.rfind("SUMMARY") :]
        print(summary)
        assert returncode == 0, out[-25000:]
        found = re.search(r"Tested: (\d+)", summary)
        assert found, summary
        tested += int(found.group(1))
    operations = sum(len(item) for item in document["paths"].values())
    assert tested == operations - len(EXCLUDED)
