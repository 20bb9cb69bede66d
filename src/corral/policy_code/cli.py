"""`corral policies export / apply`: the tenant's policy document as a YAML file kept in git, through the API
of a running server with an API token (so the server's permissions, scopes and audit apply).

YAML in, JSON over the wire: the file is parsed here (no aliases, no tags beyond YAML's plain types, errors
with their line), secrets may be written as ``{$env: NAME}`` and are read from this process's environment
so they need not live in the repository.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml

policies_app = typer.Typer(
    help="Policy as code: filters, compliance policies, configuration profiles and assignments as YAML.",
    no_args_is_help=True,
)

ENV_MARK = "$env"
URL = typer.Option(envvar="CORRAL_URL", help="The Corral server's base URL (CORRAL_URL)")
TOKEN = typer.Option(envvar="CORRAL_TOKEN", help="An API token (CORRAL_TOKEN; see 'corral token create')")
CA_FILE = typer.Option(envvar="CORRAL_CA_FILE", help="CA certificate to trust for an HTTPS server (PEM)")


class DocumentError(Exception):
    """The file cannot be a policy document: where and why."""


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(1)


# ------------------------------------------------------------------------------------------------ YAML
class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML ships no types
    """Block style, lists indented under their key, no aliases, multi-line strings as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(document: dict[str, Any]) -> str:
    header = (
        "# Corral policy document: filters, compliance policies and configuration profiles with their\n"
        "# assignments. Apply with 'corral policies apply FILE --dry-run', then without --dry-run.\n"
    )
    return header + str(yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110))


def load(text: str) -> dict[str, Any]:
    """The document in ``text``: YAML's plain types only, aliases refused (a small file must not expand into
    a huge one), ``{$env: NAME}`` replaced by that environment variable."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise DocumentError(f"line {mark.line + 1}: YAML aliases (*name) are not allowed here.")
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise DocumentError(f"{where}{exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise DocumentError(f"not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise DocumentError(
            "the document is a mapping with version, filters, compliance_policies and configuration_profiles."
        )
    out: dict[str, Any] = _with_env(data, "")
    return out


def _with_env(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        if set(value) == {ENV_MARK}:
            name = value[ENV_MARK]
            if not isinstance(name, str) or name not in os.environ:
                raise DocumentError(f"{path.lstrip('.')}: the environment variable {name!r} is not set.")
            return os.environ[name]
        return {key: _with_env(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_with_env(item, f"{path}.{index}") for index, item in enumerate(value)]
    if not isinstance(value, str | int | float | bool) and value is not None:
        # Dates and other YAML types the API does not take: say so rather than send their repr.
        raise DocumentError(f"{path.lstrip('.')}: {type(value).__name__} values are not taken; quote it.")
    return value


# ------------------------------------------------------------------------------------------------ API
def _client(url: str, token: str, ca_file: Path | None) -> httpx.Client:
    verify: Any = str(ca_file) if ca_file else True
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        verify=verify,
        timeout=httpx.Timeout(300, connect=10),
    )


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"the server answered {response.status_code}"
    if not isinstance(body, dict):
        return f"the server answered {response.status_code}"
    lines = [str(body.get("detail") or body.get("title") or response.status_code)]
    for error in body.get("errors") or []:
        location = str(error.get("location", "")).removeprefix("body.")
        lines.append(f"  {location}: {error.get('message')}")
    return "\n".join(lines)


def _call(url: str, token: str, ca_file: Path | None, method: str, path: str, **kwargs: Any) -> Any:
    try:
        with _client(url, token, ca_file) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {url}: {exc}") from exc
    if response.status_code >= 400:
        raise _fail(_problem(response))
    return response.json()


# ------------------------------------------------------------------------------------------------ output
LABELS = {
    "filter": "filter",
    "compliance_policy": "compliance policy",
    "configuration_profile": "configuration profile",
}
SIGNS = {"create": ("+", "green"), "update": ("~", "yellow"), "delete": ("-", "red")}


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(value) + "]"
    return json.dumps(value, ensure_ascii=False)  # true, 12, {"ssid": "Corp", …}


def report(result: dict[str, Any]) -> str:
    lines = []
    for change in result["changes"]:
        sign, _ = SIGNS[change["action"]]
        lines.append(f'{sign} {LABELS[change["kind"]]} "{change["name"]}"')
        for item in change["fields"]:
            if change["action"] == "create" or item["old"] is None:
                lines.append(f"    {item['path']}: {_value(item['new'])}")
            elif item["new"] is None:
                lines.append(f"    {item['path']}: {_value(item['old'])} → (removed)")
            else:
                lines.append(f"    {item['path']}: {_value(item['old'])} → {_value(item['new'])}")
    counts = {a: sum(1 for c in result["changes"] if c["action"] == a) for a in SIGNS}
    done = result["changes"] and not result["dry_run"]  # what happened, else what would
    summary = (
        ", ".join(f"{counts[action]} {action + 'd' if done else 'to ' + action}" for action in SIGNS)
        + f", {result['unchanged']} unchanged"
    )
    if result["dry_run"]:
        summary += " (dry run: nothing was changed)"
    lines.append(summary)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ commands
@policies_app.command("export")
def export(
    url: Annotated[str, URL] = "http://127.0.0.1:8000",
    token: Annotated[str, TOKEN] = "",
    ca_file: Annotated[Path | None, CA_FILE] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (default: standard output)")
    ] = None,
) -> None:
    """Write the tenant's policy document as YAML (stable order: commit it and diff it in git)."""
    if not token:
        raise _fail("An API token is needed: --token or CORRAL_TOKEN (see 'corral token create').")
    document = _call(url, token, ca_file, "GET", "/api/v1/policy-document")
    text = dump(document)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)


@policies_app.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(help="The policy document (YAML); - for standard input")],
    url: Annotated[str, URL] = "http://127.0.0.1:8000",
    token: Annotated[str, TOKEN] = "",
    ca_file: Annotated[Path | None, CA_FILE] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; change nothing")
    ] = False,
) -> None:
    """Make the tenant what FILE says, in one transaction (see docs/policies.md, "Policy as code")."""
    if not token:
        raise _fail("An API token is needed: --token or CORRAL_TOKEN (see 'corral token create').")
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"{file}: cannot read it: {exc}") from exc
    try:
        document = load(text)
    except DocumentError as exc:
        raise _fail(f"{file}: {exc}") from exc
    result = _call(
        url,
        token,
        ca_file,
        "POST",
        "/api/v1/policy-document/apply",
        params={"dry_run": "true" if dry_run else "false"},
        json=document,
    )
    typer.echo(report(result))
