"""The ``corral-agent`` command line (argparse: no dependencies beyond the standard library)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from corral_agent._version import __version__
from corral_agent.client import Agent, CheckinSummary
from corral_agent.config import AgentConfig
from corral_agent.daemon import run
from corral_agent.errors import AgentError, ConfigError
from corral_agent.state import ENV_STATE_DIR, default_state_dir

ENV_TOKEN = "CORRAL_ENROLLMENT_TOKEN"  # noqa: S105 - the name of a variable, not a secret


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default,
        help=f"the agent's state directory (default: ${ENV_STATE_DIR}, else {default_state_dir()})",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        help="JSON configuration: managed_data_dirs, allow_destructive, simulate",
    )
    parser.add_argument(
        "--simulate",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="record what commands would do in simulated-effects.jsonl instead of doing it",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="more logging (-v: info, -vv: debug)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral-agent",
        description="Corral's reference device agent (device protocol v1).",
    )
    parser.add_argument("--version", action="version", version=f"corral-agent {__version__}")
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enroll = commands.add_parser(
        "enroll",
        help="enroll this device",
        description="Enroll this device with an enrollment URL (as shown with its QR code), or with --url "
        "and --token. The key pair is generated here; only a certificate request leaves the device.",
    )
    enroll.add_argument("enrollment_url", nargs="?", help="https://HOST/device/v1/enroll?token=…&ca=sha256:…")
    enroll.add_argument("--url", help="the server's URL (with --token)")
    enroll.add_argument("--token", help=f"the enrollment token (or ${ENV_TOKEN})")
    enroll.add_argument(
        "--ca-fingerprint", help="sha256:<hex> of the CA that signed the server's TLS certificate"
    )
    enroll.add_argument("--name", help="the device name to report (default: the host name)")
    enroll.add_argument(
        "--force", action="store_true", help="replace an existing enrollment in the state directory"
    )
    _global_options(enroll, suppress=True)

    for name, text in (
        ("run", "run the agent: keep the wake-up stream open and check in periodically"),
        ("checkin", "check in once and print a summary"),
        ("renew", "renew the device certificate now (normally the server asks for it)"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        _global_options(sub, suppress=True)
    status = commands.add_parser("status", help="print the local state", description="Print the local state.")
    status.add_argument("--json", action="store_true", help="as JSON")
    _global_options(status, suppress=True)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbosity < 3:
        logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
        logging.getLogger("httpcore").setLevel(max(level, logging.WARNING))


def make_agent(args: argparse.Namespace) -> Agent:
    config = AgentConfig.load(args.config) if args.config else AgentConfig()
    if args.simulate:
        config = config.with_simulate(True)
    return Agent(args.state_dir, config=config)


def _print_summary(summary: CheckinSummary) -> None:
    print(f"check-ins:  {summary.requests}")
    print(f"inventory:  {summary.inventory or '-'}{' (sent)' if summary.inventory_sent else ''}")
    for command in summary.commands:
        print(f"command:    {command['type']} {command['id']}")
    for result in summary.results_sent:
        line = f"reported:   {result['command_id']} {result['status']}"
        if result.get("error"):
            line += f" ({result['error']})"
        print(line)
    if summary.checkin_interval_seconds:
        print(f"next:       in {summary.checkin_interval_seconds} s")
    if summary.renewed:
        print("certificate renewed")
    if summary.ended:
        print(
            f"this device was {'wiped' if summary.ended == 'wipe' else 'retired'}: its enrollment is removed"
        )


async def _main(args: argparse.Namespace) -> int:
    agent = make_agent(args)
    if args.command == "enroll":
        url = args.enrollment_url or args.url
        if not url:
            raise ConfigError("give an enrollment URL, or --url and --token")
        if args.enrollment_url and args.url:
            raise ConfigError("give either an enrollment URL or --url, not both")
        token = args.token or os.environ.get(ENV_TOKEN)
        state = await agent.enroll(url, token, args.ca_fingerprint, name=args.name, force=args.force)
        print(f"enrolled: device {state.device_id} with {state.server_url}")
        print(f"certificate fingerprint: {state.certificate_fingerprint}")
        if state.tls_ca_fingerprint:
            print(f"TLS pinned to CA sha256:{state.tls_ca_fingerprint}")
        print(f"state: {agent.state_dir}")
        return 0
    if args.command == "checkin":
        _print_summary(await agent.checkin())
        return 0
    if args.command == "renew":
        state = await agent.renew()
        print(
            f"renewed: certificate {state.certificate_fingerprint}, "
            f"expires {state.certificate_not_after:%Y-%m-%d}"
        )
        return 0
    if args.command == "run":
        summary = await run(agent)
        if summary is not None and summary.ended:
            _print_summary(summary)
        return 0
    if args.command == "status":
        info = agent.status()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            width = max(len(k) for k in info)
            for key, value in info.items():
                print(f"{key.replace('_', ' '):<{width}}  {'-' if value is None else value}")
        return 0
    raise ConfigError(f"unknown command {args.command}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return asyncio.run(_main(args))
    except ConfigError as exc:
        print(f"corral-agent: {exc}", file=sys.stderr)
        return 2
    except AgentError as exc:
        print(f"corral-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
