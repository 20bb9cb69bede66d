"""The device side of protocol v1 as a Python API: :class:`Agent`.

::

    agent = Agent(state_dir, config=AgentConfig(simulate=True))
    await agent.enroll("https://corral.example.com/device/v1/enroll?token=cet_…&ca=sha256:…")
    summary = await agent.checkin()      # inventory, commands, results, renewal
    await agent.renew()                  # normally triggered by the check-in response
    async for event in agent.events():   # one SSE connection (agent.listen() reconnects)
        ...
    await agent.aclose()

Pass ``transport=httpx.ASGITransport(app=app)`` (or a ``MockTransport``) to talk to an in-process server; a
transport bypasses TLS and therefore pinning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit

import httpx

from corral_agent import keys
from corral_agent._version import __version__
from corral_agent.actions import Executor, Runner, run_command
from corral_agent.appliers import (
    CUSTOM_PREFIX,
    ApplyContext,
    applied_families,
    apply_custom,
    apply_settings,
)
from corral_agent.config import AgentConfig
from corral_agent.errors import AgentError, AuthenticationError, NotEnrolledError, ProtocolError
from corral_agent.inventory import (
    Inventory,
    collect_inventory,
    device_facts,
    fallback_serial_number,
    inventory_hash,
)
from corral_agent.sse import ServerSentEvent, iter_events
from corral_agent.state import AgentState, StateStore, utc_now_text
from corral_agent.transport import (
    Clock,
    DeviceHttp,
    RequestSigner,
    RetryPolicy,
    Sleep,
    check_plain_http,
    create_http_client,
    fetch_pinned_ca,
    normalize_fingerprint,
    pem_fingerprint,
)

log = logging.getLogger(__name__)

ENROLL_PATH = "/device/v1/enroll"
#: Check-ins one :meth:`Agent.checkin` may chain (inventory needed, results to deliver after acting).
MAX_ROUNDS = 6


# ----------------------------------------------------------------------------------------- enrollment URL
@dataclass(frozen=True)
class EnrollmentTarget:
    server_url: str
    enroll_url: str
    token: str | None
    ca_fingerprint: str | None


def parse_enrollment_url(
    url: str, token: str | None = None, ca_fingerprint: str | None = None
) -> EnrollmentTarget:
    """Accepts an enrollment URL (``https://host/device/v1/enroll?token=…&ca=sha256:…``) or a server URL
    (``https://host``, with ``token`` given separately). Explicit ``token``/``ca_fingerprint`` win over the
    URL's query."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AgentError(f"not an http(s) URL: {url!r}")
    query = parse_qs(parts.query)
    token = token or next(iter(query.get("token", [])), None)
    ca = ca_fingerprint or next(iter(query.get("ca", [])), None)
    path = parts.path.rstrip("/")
    for suffix in (ENROLL_PATH, "/device/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    server_url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return EnrollmentTarget(
        server_url=server_url,
        enroll_url=server_url + ENROLL_PATH,
        token=token.strip() if token else None,
        ca_fingerprint=normalize_fingerprint(ca) if ca else None,
    )


# ------------------------------------------------------------------------------------------------ summary
@dataclass
class CheckinSummary:
    """What one :meth:`Agent.checkin` did."""

    requests: int = 0
    inventory_sent: bool = False
    inventory: str | None = None
    commands: list[dict[str, Any]] = field(default_factory=list)
    results_sent: list[dict[str, Any]] = field(default_factory=list)
    checkin_interval_seconds: int | None = None
    renewed: bool = False
    #: ``"wipe"`` or ``"retire"`` when the device's enrollment ended during this check-in.
    ended: str | None = None
    #: The desired state applied during this check-in (its version and how many settings), if any.
    desired_state: dict[str, Any] | None = None


# ------------------------------------------------------------------------------------------------ agent
class Agent:
    """A Corral device agent working on one state directory."""

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        config: AgentConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        inventory: Callable[[], Inventory] | None = None,
        runner: Runner = run_command,
        os_name: str | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        time_source: Callable[[], float] = time.time,
    ) -> None:
        self.store = StateStore(state_dir)
        self.config = config or AgentConfig()
        self.transport = transport
        self.collect_inventory = inventory or (lambda: collect_inventory(os_name))
        self.executor = Executor(self.config, self.store, os_name=os_name, runner=runner)
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.time_source = time_source
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Nothing is held open between operations; kept so the agent can be used as a context manager."""

    # -------------------------------------------------------------------------------------------- state
    @property
    def state_dir(self) -> Path:
        return self.store.directory

    @property
    def enrolled(self) -> bool:
        return self.store.exists()

    def load_state(self) -> AgentState:
        return self.store.load()

    def status(self) -> dict[str, Any]:
        """The local state in a printable form (no secrets: the key stays in its file)."""
        state = self.store.load()
        return {
            "state_dir": str(self.store.directory),
            "server": state.server_url,
            "device_id": state.device_id,
            "device_name": state.device_name,
            "certificate_fingerprint": state.certificate_fingerprint,
            "certificate_expires": state.certificate_not_after.isoformat().replace("+00:00", "Z"),
            "tls_ca_fingerprint": state.tls_ca_fingerprint,
            "enrolled_at": state.enrolled_at,
            "last_checkin_at": state.last_checkin_at,
            "checkin_interval_seconds": state.checkin_interval_seconds,
            "clock_skew_seconds": state.clock_skew_seconds,
            "pending_results": len(state.pending_results),
            "simulate": self.config.simulate,
        }

    # -------------------------------------------------------------------------------------------- http
    @asynccontextmanager
    async def _http(
        self, state: AgentState | None, *, pinned_ca_pem: str | None = None
    ) -> AsyncIterator[DeviceHttp]:
        """A client for one operation: pinned TLS, and signing with the device key when ``state`` is given."""
        clock = Clock(state.clock_skew_seconds if state else 0.0, time_source=self.time_source)
        if state is not None:
            clock.on_change = lambda skew: setattr(state, "clock_skew_seconds", skew)
        signer = None
        if state is not None:
            pinned_ca_pem = state.tls_ca_pem
            if state.tls_ca_fingerprint and (
                not pinned_ca_pem or pem_fingerprint(pinned_ca_pem) != state.tls_ca_fingerprint
            ):
                raise AgentError("the pinned CA in the agent state does not match its fingerprint; re-enroll")
            key = keys.load_private_key(self.store.key_path(state.key_file))
            signer = RequestSigner(key, state.certificate_fingerprint, clock)
        client = create_http_client(pinned_ca_pem=pinned_ca_pem, transport=self.transport)
        try:
            yield DeviceHttp(client, clock=clock, signer=signer, retry=self.retry, sleep=self.sleep)
        finally:
            await client.aclose()

    def _check_url(self, url: str) -> None:
        if self.transport is None:
            check_plain_http(url)

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """One operation at a time: in this process (asyncio lock) and across processes (``flock``)."""
        async with self._lock:
            self.store.ensure()
            try:
                import fcntl
            except ImportError:  # Windows: in-process only
                yield
                return
            fd = os.open(self.store.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(0.2)
                yield
            finally:
                os.close(fd)  # releases the lock

    # -------------------------------------------------------------------------------------------- enroll
    async def enroll(
        self,
        url: str,
        token: str | None = None,
        ca_fingerprint: str | None = None,
        *,
        name: str | None = None,
        device: dict[str, Any] | None = None,
        force: bool = False,
    ) -> AgentState:
        """Enroll this device (device-protocol.md §2).

        ``url`` is an enrollment URL (token and CA fingerprint in its query) or the server's URL with
        ``token`` (and ``ca_fingerprint`` when the server serves TLS from its own CA). ``device`` overrides
        the facts read from this machine (``serial_number``, ``name``, ``platform``, ``os_version``,
        ``model``, ``manufacturer``). Refuses when already enrolled unless ``force``.
        """
        target = parse_enrollment_url(url, token, ca_fingerprint)
        if not target.token:
            raise AgentError("an enrollment token is needed (--token, or the token= of an enrollment URL)")
        self._check_url(target.enroll_url)
        async with self._exclusive():
            existing = self.store.load_optional()
            if existing is not None and not force:
                raise AgentError(
                    f"already enrolled as device {existing.device_id} with {existing.server_url} "
                    f"(state in {self.store.directory}); enroll again with --force to replace it"
                )
            pinned_ca_pem = None
            if target.ca_fingerprint and self.transport is None:
                pinned_ca_pem = await asyncio.to_thread(
                    fetch_pinned_ca, target.enroll_url, target.ca_fingerprint
                )
            inventory = await asyncio.to_thread(self.collect_inventory)
            facts: dict[str, Any] = device_facts(inventory, name)
            facts.update({k: v for k, v in (device or {}).items() if v is not None})
            if not facts.get("serial_number"):
                # The server needs a serial number; without a readable one, a stable stand-in.
                facts["serial_number"] = (
                    await asyncio.to_thread(fallback_serial_number) or self.store.instance_id()
                )

            self.store.ensure()
            key = keys.generate_private_key()
            key_file = keys.new_key_file_name()
            key_path = self.store.key_path(key_file)
            keys.save_private_key(key_path, key)
            try:
                body = {"token": target.token, "csr": keys.build_csr(key), "device": facts}
                async with self._http(None, pinned_ca_pem=pinned_ca_pem) as http:
                    response = await http.request("POST", target.enroll_url, json_body=body, signed=False)
                    data = _json_object(response)
                    if not response.headers.get("date"):
                        http.clock.observe_server_time(data.get("server_time"))
                    skew = http.clock.skew
                state = self._state_from_enrollment(data, target, key_file, key, pinned_ca_pem, facts, skew)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    key_path.unlink()
                raise
            self.store.save(state)
            if existing is not None and existing.key_file != key_file:
                with contextlib.suppress(FileNotFoundError, AgentError):
                    self.store.key_path(existing.key_file).unlink()
            log.info("enrolled as device %s with %s", state.device_id, state.server_url)
            return state

    def _state_from_enrollment(
        self,
        data: dict[str, Any],
        target: EnrollmentTarget,
        key_file: str,
        key: Any,
        pinned_ca_pem: str | None,
        facts: dict[str, Any],
        skew: float,
    ) -> AgentState:
        for name in ("device_id", "certificate", "certificate_fingerprint", "checkin_url", "events_url"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise AgentError(f"the server's enrollment answer lacks {name!r}")
        certificate = data["certificate"]
        self._check_certificate(certificate, data["certificate_fingerprint"], key)
        for name in ("checkin_url", "events_url"):
            self._check_url(data[name])
        return AgentState(
            server_url=target.server_url,
            device_id=data["device_id"],
            key_file=key_file,
            certificate_pem=certificate,
            certificate_fingerprint=data["certificate_fingerprint"].lower(),
            checkin_url=data["checkin_url"],
            events_url=data["events_url"],
            ca_certificates_pem=str(data.get("ca_certificates") or ""),
            checkin_interval_seconds=_interval(data.get("checkin_interval_seconds"), 180),
            tls_ca_fingerprint=target.ca_fingerprint if pinned_ca_pem else None,
            tls_ca_pem=pinned_ca_pem,
            device_name=facts.get("name"),
            clock_skew_seconds=skew,
        )

    @staticmethod
    def _check_certificate(certificate: str, fingerprint: str, key: Any) -> None:
        try:
            matches = keys.certificate_matches_key(certificate, key)
            actual = keys.certificate_fingerprint(certificate)
        except ValueError as exc:
            raise AgentError(f"the server sent an unreadable certificate: {exc}") from exc
        if not matches:
            raise AgentError("the server's certificate is not for this device's key")
        if actual != fingerprint.lower():
            raise AgentError("the server's certificate_fingerprint does not match its certificate")

    # -------------------------------------------------------------------------------------------- checkin
    async def checkin(self) -> CheckinSummary:
        """Check in (device-protocol.md §4): report pending results and, when it changed, the inventory;
        carry out the commands received and check in again at once to report their results; renew the
        certificate when the server asks. Raises :class:`NotEnrolledError`, :class:`AuthenticationError`
        (401: revoked, retired, clock…), :class:`ProtocolError` or :class:`AgentError`."""
        summary = CheckinSummary()
        async with self._exclusive():
            state = self.store.load()
            renew = False
            async with self._http(state) as http:
                if state.pending_action is not None:
                    await self._finish_pending_action(http, state, summary)
                    return summary
                need_inventory = False
                dropped_refused_results = False
                inventory_refused = False
                handled: set[str] = set()
                for _ in range(MAX_ROUNDS):
                    inventory = await asyncio.to_thread(self.collect_inventory)
                    digest = inventory_hash(inventory)
                    sending = list(state.pending_results)
                    body: dict[str, Any] = {
                        "agent_version": __version__,
                        "inventory_hash": digest,
                        "command_results": sending,
                    }
                    send_inventory = (
                        need_inventory or digest != state.inventory_hash
                    ) and not inventory_refused
                    if send_inventory:
                        body["inventory"] = inventory
                    try:
                        response = await http.request(
                            "POST", state.checkin_url, json_body=body, repeatable=True
                        )
                    except ProtocolError as exc:
                        if exc.status in (413, 422) and send_inventory and not inventory_refused:
                            # An inventory the server cannot take must not stop check-ins (commands, results).
                            log.error("the server refused our inventory (%s); checking in without it", exc)
                            inventory_refused = True
                            continue
                        if exc.status == 422 and sending and not dropped_refused_results:
                            # A result the server refuses (e.g. for a command it does not know) would block
                            # every later check-in: drop the undelivered results once and try again.
                            log.error("the server refused our command results (%s); dropping them", exc)
                            state.pending_results = [r for r in state.pending_results if r not in sending]
                            dropped_refused_results = True
                            inventory_refused = False  # the results were the problem: try the inventory again
                            self.store.save(state)
                            continue
                        self.store.save(state)
                        raise
                    data = _json_object(response)
                    if not response.headers.get("date"):
                        http.clock.observe_server_time(data.get("server_time"))
                    summary.requests += 1
                    summary.inventory_sent = summary.inventory_sent or send_inventory
                    summary.results_sent.extend(sending)
                    state.pending_results = [r for r in state.pending_results if r not in sending]
                    state.last_checkin_at = utc_now_text()
                    state.checkin_interval_seconds = _interval(
                        data.get("checkin_interval_seconds"), state.checkin_interval_seconds
                    )
                    summary.checkin_interval_seconds = state.checkin_interval_seconds
                    status = data.get("inventory")
                    summary.inventory = status if isinstance(status, str) else None
                    if status in ("accepted", "unchanged"):
                        state.inventory_hash = digest
                        need_inventory = False
                    elif status == "needed":
                        need_inventory = True
                    renew = renew or data.get("renew_certificate") is True
                    wanted = data.get("desired_state_version")
                    if isinstance(wanted, int) and wanted != state.desired_state_version:
                        await self._apply_desired_state(http, state, summary)
                    await self._process_commands(data.get("commands"), state, summary, handled)
                    self.store.save(state)
                    if state.pending_action is not None:
                        await self._finish_pending_action(http, state, summary)
                        return summary
                    if not state.pending_results and not (
                        need_inventory and not send_inventory and not inventory_refused
                    ):
                        break
                else:
                    log.warning(
                        "stopped after %d check-ins in a row; the rest waits for the next one", MAX_ROUNDS
                    )
                self.store.save(state)
            if renew:
                try:
                    await self._renew(state)
                    summary.renewed = True
                except AgentError as exc:  # the old certificate stays valid; the server asks again next time
                    log.error("certificate renewal failed: %s", exc)
        return summary

    async def _apply_desired_state(
        self, http: DeviceHttp, state: AgentState, summary: CheckinSummary
    ) -> None:
        """Fetch the desired-state document, apply its settings through the appliers, report per setting
        (device-protocol.md §10). A server too busy to answer (429, after the transport's retries with
        Retry-After and jitter) or a failure leaves the version as it was: the next check-in tries again."""
        base = state.checkin_url.rsplit("/", 1)[0]
        try:
            response = await http.request("GET", f"{base}/desired-state", repeatable=True)
            document = _json_object(response)
        except AgentError as exc:
            log.warning("could not fetch the desired state (%s); trying again at the next check-in", exc)
            return
        profiles = [p for p in document.get("profiles") or [] if isinstance(p, dict)]
        conflicts = {
            str(c.get("setting_id")): [str(i) for i in c.get("profiles") or []]
            for c in document.get("conflicts") or []
            if isinstance(c, dict)
        }
        settings = [
            (str(p.get("id")), str(s["id"]), s.get("value"))
            for p in profiles
            for s in p.get("settings") or []
            if isinstance(s, dict) and "id" in s
        ]
        # Catalog settings merge across profiles (conflicts are the server's to find); custom payloads are
        # each their profile's own.
        wanted = [(sid, value) for _, sid, value in settings if not sid.startswith(CUSTOM_PREFIX)]
        custom = [item for item in settings if item[1].startswith(CUSTOM_PREFIX)]
        executor = self.executor
        ctx = ApplyContext(
            root=self.config.settings_root,
            state_dir=self.store.directory,
            simulate=self.config.simulate,
            os_name=executor.os_name,
            run=executor.runner,
            record=lambda effect: executor.record_effect(
                {"type": "desired_state"}, str(effect.pop("effect")), **effect
            ),
        )
        results = await asyncio.to_thread(
            apply_settings, ctx, wanted, previous_families=state.applied_families
        )
        custom_results = await asyncio.to_thread(apply_custom, ctx, custom)
        report = {
            "version": document.get("version"),
            "profiles": [
                {
                    "id": p["id"],
                    "version": p["version"],
                    "settings": [
                        custom_results[(str(p["id"]), str(s["id"]))].to_json()
                        if (str(p["id"]), str(s["id"])) in custom_results
                        else results[str(s["id"])].to_json()
                        for s in p.get("settings") or []
                        if isinstance(s, dict)
                        and (
                            (str(p["id"]), str(s.get("id"))) in custom_results or str(s.get("id")) in results
                        )
                    ]
                    + [
                        {"id": sid, "state": "conflict", "message": "set differently by another profile"}
                        for sid, ids in sorted(conflicts.items())
                        if str(p["id"]) in ids
                    ],
                }
                for p in profiles
            ],
        }
        try:
            await http.request("POST", f"{base}/desired-state/report", json_body=report, repeatable=True)
        except AgentError as exc:
            log.warning(
                "could not report the desired state (%s); it is applied again at the next check-in", exc
            )
            return
        version = document.get("version")
        if isinstance(version, int):
            state.desired_state_version = version
        state.applied_families = applied_families(results)
        summary.desired_state = {"version": version, "settings": len(results)}
        self.store.save(state)

    async def _process_commands(
        self, commands: Any, state: AgentState, summary: CheckinSummary, handled: set[str]
    ) -> None:
        if not isinstance(commands, list):
            return
        for command in commands:
            if not isinstance(command, dict) or "id" not in command or "type" not in command:
                log.warning("ignoring a malformed command: %r", command)
                continue
            command_id = str(command["id"])
            if command_id in handled:
                continue  # answered during this check-in already (e.g. "not now")
            handled.add(command_id)
            summary.commands.append({"id": command_id, "type": command["type"]})
            earlier = state.processed_result(command_id)
            if earlier is not None:
                # At-least-once delivery: done already; the server did not get the result: resend it.
                log.info(
                    "command %s (%s) was processed already; reporting its result again",
                    command_id,
                    command["type"],
                )
                state.queue_result(earlier)
                continue
            log.info("carrying out command %s (%s)", command_id, command["type"])
            outcome = await asyncio.to_thread(self.executor.execute, command, state)
            result = outcome.result.to_json()
            state.queue_result(result)
            if outcome.result.status != "not_now":
                state.remember_processed(result)
            if outcome.deferred:
                state.pending_action = {"command": command, "ends_enrollment": outcome.ends_enrollment}
                self.store.save(state)
                return  # nothing after a wipe or retire matters
            self.store.save(state)

    async def _finish_pending_action(
        self, http: DeviceHttp, state: AgentState, summary: CheckinSummary
    ) -> None:
        """Deliver the acknowledgement of a wipe/retire, then carry it out and forget the enrollment. The
        server revokes the certificate when it gets the acknowledgement, so this is the last request."""
        action = state.pending_action or {}
        command = action.get("command") or {}
        if state.pending_results:
            sending = list(state.pending_results)
            inventory = await asyncio.to_thread(self.collect_inventory)
            body = {
                "agent_version": __version__,
                "inventory_hash": inventory_hash(inventory),
                "command_results": sending,
            }
            try:
                await http.request("POST", state.checkin_url, json_body=body, repeatable=True)
                summary.requests += 1
                summary.results_sent.extend(sending)
            except AgentError as exc:
                # Acting matters more than the server hearing about it first: a device that was told to wipe
                # wipes (the server marks it once it hears, or an administrator deletes it).
                log.warning(
                    "could not deliver the acknowledgement of %s (%s); carrying it out anyway",
                    command.get("type"),
                    exc,
                )
        try:
            details = await asyncio.to_thread(self.executor.perform_deferred, command)
            log.warning("%s %s carried out: %s", command.get("type"), command.get("id"), details)
        except Exception:
            log.exception("carrying out %s %s failed", command.get("type"), command.get("id"))
        summary.ended = str(command.get("type"))
        if action.get("ends_enrollment", True):
            self.store.forget_enrollment()
        else:
            state.pending_action = None
            self.store.save(state)

    # -------------------------------------------------------------------------------------------- renew
    async def renew(self) -> AgentState:
        """Replace the device key and certificate (device-protocol.md §6)."""
        async with self._exclusive():
            return await self._renew(self.store.load())

    async def _renew(self, state: AgentState) -> AgentState:
        key = keys.generate_private_key()
        key_file = keys.new_key_file_name()
        key_path = self.store.key_path(key_file)
        keys.save_private_key(key_path, key)
        old_key_path = self.store.key_path(state.key_file)
        try:
            async with self._http(state) as http:  # signed with the current key
                response = await http.request(
                    "POST", urljoin(state.checkin_url, "renew"), json_body={"csr": keys.build_csr(key)}
                )
            data = _json_object(response)
            for name in ("certificate", "certificate_fingerprint"):
                if not isinstance(data.get(name), str) or not data[name]:
                    raise AgentError(f"the server's renewal answer lacks {name!r}")
            self._check_certificate(data["certificate"], data["certificate_fingerprint"], key)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                key_path.unlink()
            raise
        state.key_file = key_file
        state.certificate_pem = data["certificate"]
        state.certificate_fingerprint = data["certificate_fingerprint"].lower()
        if data.get("ca_certificates"):
            state.ca_certificates_pem = str(data["ca_certificates"])
        state.renewed_at = utc_now_text()
        self.store.save(state)  # the switch to the new key and certificate is this one atomic rename
        with contextlib.suppress(FileNotFoundError):
            old_key_path.unlink()
        log.info("certificate renewed: %s", state.certificate_fingerprint)
        return state

    # -------------------------------------------------------------------------------------------- events
    async def events(self) -> AsyncIterator[ServerSentEvent]:
        """Events of one connection to the wake-up stream (device-protocol.md §7); ends when it closes."""
        state = self.store.load()
        async with self._http(state) as http, http.stream(state.events_url) as response:
            async for event in iter_events(response.aiter_lines()):
                yield event

    async def listen(
        self,
        on_wake: Callable[[ServerSentEvent], Awaitable[None]],
        stop: asyncio.Event | None = None,
        *,
        max_delay: float = 300.0,
    ) -> None:
        """Keep the wake-up stream open, calling ``on_wake`` for every ``wake`` event; reconnect with
        exponential backoff and jitter. Returns when ``stop`` is set or the device is no longer enrolled."""
        stop = stop or asyncio.Event()
        attempt = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                async for event in self.events():
                    attempt = 0
                    if event.event == "wake":
                        log.info("wake-up: %s", event.data)
                        await on_wake(event)
                log.info("the event stream closed; reconnecting")
            except NotEnrolledError:
                return
            except (AgentError, httpx.HTTPError, OSError) as exc:
                log.info("event stream: %s", exc or type(exc).__name__)
            if time.monotonic() - started > 60:
                attempt = 0
            backoff = min(max_delay, 2.0 * (2**attempt))
            delay = random.uniform(backoff / 2, backoff)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise AgentError(f"the server answered {response.status_code} without JSON") from exc
    if not isinstance(data, dict):
        raise AgentError("the server's answer is not a JSON object")
    return data


def _interval(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


__all__ = [
    "Agent",
    "AuthenticationError",
    "CheckinSummary",
    "EnrollmentTarget",
    "parse_enrollment_url",
]
