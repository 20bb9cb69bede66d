"""``corral-agent run``: the wake-up stream in one task, periodic check-ins in another (asyncio).

A wake-up makes the check-in task check in at once; otherwise it checks in every
``checkin_interval_seconds`` (as the server last said) plus a little jitter. Errors back off and never end the
loop; SIGTERM or SIGINT stop it gracefully; a wipe or retire ends it (the device is no longer enrolled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal

from corral_agent.client import Agent, CheckinSummary
from corral_agent.errors import AgentError, AuthenticationError, NotEnrolledError, PinningError
from corral_agent.sse import ServerSentEvent

log = logging.getLogger(__name__)

#: After an error, wait this long first; doubled per further error, at most the check-in interval.
ERROR_BACKOFF_SECONDS = 30.0


def next_delay(interval: float) -> float:
    """The check-in interval plus jitter (up to 10 %, at most 10 minutes), so devices spread out."""
    return interval + random.uniform(0, min(interval * 0.1, 600.0))


def error_delay(failures: int, interval: float) -> float:
    backoff = min(max(interval, ERROR_BACKOFF_SECONDS), ERROR_BACKOFF_SECONDS * 2 ** max(failures - 1, 0))
    return random.uniform(backoff / 2, backoff)


async def _wait_for_any(seconds: float, *events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def checkin_loop(agent: Agent, stop: asyncio.Event, wake: asyncio.Event) -> CheckinSummary | None:
    """Check in now, then at every interval or wake-up, until ``stop`` or the end of the enrollment."""
    failures = 0
    while not stop.is_set():
        wake.clear()
        interval = float(agent.load_state().checkin_interval_seconds)
        try:
            summary = await agent.checkin()
        except NotEnrolledError:
            raise
        except PinningError as exc:
            failures += 1
            log.error("check-in refused by TLS verification: %s", exc)
            delay = error_delay(failures, interval)
        except AuthenticationError as exc:
            failures += 1
            log.error(
                "the server refused the device's signature (%s); a retired, wiped or deleted device must be "
                "enrolled again",
                exc,
            )
            delay = error_delay(failures, interval)
        except AgentError as exc:
            failures += 1
            log.warning("check-in failed: %s", exc)
            delay = error_delay(failures, interval)
        else:
            failures = 0
            log.info(
                "checked in: %d request(s), inventory %s, %d command(s)",
                summary.requests,
                summary.inventory,
                len(summary.commands),
            )
            if summary.ended:
                log.warning("the device was %s: the agent's enrollment is removed; stopping", summary.ended)
                return summary
            delay = next_delay(float(summary.checkin_interval_seconds or interval))
        await _wait_for_any(delay, stop, wake)
    return None


async def run(
    agent: Agent, *, stop: asyncio.Event | None = None, handle_signals: bool = True
) -> CheckinSummary | None:
    """Run until stopped (SIGTERM/SIGINT or ``stop``) or until a wipe/retire ends the enrollment (its summary
    is returned). Raises :class:`NotEnrolledError` when there is nothing to run."""
    agent.load_state()  # fail early when not enrolled
    stop = stop or asyncio.Event()
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)

    async def on_wake(event: ServerSentEvent) -> None:
        wake.set()

    listener = asyncio.create_task(agent.listen(on_wake, stop), name="corral-agent-events")
    try:
        return await checkin_loop(agent, stop, wake)
    finally:
        stop.set()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        for sig in installed:
            loop.remove_signal_handler(sig)
        log.info("stopped")
