"""Wake-ups for connected devices, from any replica (device-protocol.md §7).

Whoever queues a command for a device calls ``pg_notify('corral_device_wake', '<device_id>:<reason>')`` in the
same transaction (``corral.push.service.wake_many``); PostgreSQL delivers it at commit to every listener. Each
process runs one :class:`PushHub`: a dedicated asyncpg connection (not from the SQLAlchemy pool, which must
never be held by a long-lived task) that ``LISTEN``s on the channel and hands every notification to the
:class:`WakeQueue` of each stream of that device held by this process. A replica therefore wakes devices
connected to any other replica.

When the listening connection is lost it is re-opened with exponential backoff and jitter; notifications sent
meanwhile are lost, so every connected device is then woken once (reason ``resync``). A wake-up is only a
hint: the check-in it causes is the truth, so a lost or duplicated wake-up costs latency, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge

log = logging.getLogger("corral.push")

#: The PostgreSQL channel of wake-ups; each payload is ``<device_id>:<reason>``.
WAKE_CHANNEL = "corral_device_wake"

CONNECTED_DEVICES = Gauge("corral_push_connected_devices", "Devices holding a wake-up stream to this process")
STREAMS = Gauge("corral_push_streams", "Open wake-up streams (a device may hold more than one)")
NOTIFICATIONS = Counter(
    "corral_push_notifications",
    "Wake-up notifications received from PostgreSQL (LISTEN), by whether the device is connected here",
    ["connected"],
)
LISTENER_UP = Gauge("corral_push_listener_up", "1 while this process's LISTEN connection is open")
LISTENER_RECONNECTS = Counter(
    "corral_push_listener_reconnects", "Times the LISTEN connection was re-opened after it was lost"
)

#: Different wake-up reasons a stream keeps while its device has not read them; duplicates are coalesced.
MAX_PENDING = 4
#: What :meth:`WakeQueue.get` returns when a heartbeat is due (never a wake-up reason).
PING = ":ping"
#: Devices woken per event-loop turn when every connected device is woken (after a reconnect).
WAKE_ALL_BATCH = 1000


class WakeQueue:
    """The pending wake-ups of one stream: bounded, duplicate reasons coalesced, one reader; also carries the
    hub's heartbeat ticks.

    A few pointers instead of an ``asyncio.Queue`` (three deques and an Event, ~3 KiB each) and a timer: with
    tens of thousands of idle streams per process this matters (docs/benchmarks.md, S7)."""

    __slots__ = ("_closed", "_pending", "_ping", "_waiter", "device_id", "slot")

    def __init__(self, device_id: str, slot: int = 0) -> None:
        self.device_id = device_id
        self.slot = slot
        self._pending: list[str] = []
        self._ping = False
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, reason: str) -> bool:
        """Queue a wake-up; False when it was coalesced with a pending one, dropped (full) or closed."""
        if self._closed or reason in self._pending or len(self._pending) >= MAX_PENDING:
            return False
        self._pending.append(reason)
        self._notify()
        return True

    def ping(self) -> None:
        """A heartbeat is due (the reader gets :data:`PING` unless a wake-up is pending: that serves too)."""
        if not self._closed:
            self._ping = True
            self._notify()

    def close(self) -> None:
        """End the stream: the reader gets ``None``."""
        self._closed = True
        self._notify()

    def _notify(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> str | None:
        """The next reason (oldest first), else :data:`PING` when a heartbeat is due; ``None`` once closed."""
        while not self._pending and not self._ping and not self._closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._closed:
            return None
        self._ping = False
        return self._pending.pop(0) if self._pending else PING


def _uvicorn_exiting() -> bool:
    """True once a uvicorn server running in the main thread was asked to exit (SIGTERM/SIGINT).

    uvicorn sends the lifespan shutdown only after open responses have ended (or after its graceful-shutdown
    timeout), so endless streams must notice the exit themselves. While it serves, uvicorn's bound
    ``handle_exit`` is the signal handler; its ``should_exit`` is the flag."""
    handler: Any = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


class PushHub:
    """Per-process fan-out of wake-ups to the streams connected here, and their heartbeats.

    Heartbeats come from one task, not a timer per stream: streams are spread over one slot per second of the
    heartbeat interval, and each second one slot's streams are pinged together (fewer timers and objects per
    stream, and writes batched rather than scattered)."""

    def __init__(
        self,
        dsn: str,
        *,
        heartbeat_seconds: float = 25.0,
        check_seconds: float = 30.0,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._heartbeat = heartbeat_seconds
        self._check_seconds = check_seconds
        self._backoff = (backoff_min, backoff_max)
        self._queues: dict[str, set[WakeQueue]] = {}
        self._slots: list[set[WakeQueue]] = [set() for _ in range(max(1, round(heartbeat_seconds)))]
        self._next_slot = 0
        self._listening = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.listener_pid: int | None = None
        self.draining = False
        self._listened_before = False

    # ------------------------------------------------------------------------------------------- lifecycle
    async def start(self, *, wait: float = 10.0) -> None:
        """Start listening; waits up to ``wait`` seconds for the first ``LISTEN`` (then keeps trying)."""
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="corral-push-listener"),
            asyncio.create_task(self._heartbeats(), name="corral-push-heartbeats"),
            asyncio.create_task(self._watch_exit(), name="corral-push-exit-watch"),
        ]
        if wait <= 0:
            return
        try:
            await asyncio.wait_for(self._listening.wait(), wait)
        except TimeoutError:
            log.error("push: could not LISTEN within %.0f s; wake-ups wait until it can", wait)

    async def stop(self) -> None:
        self._stopping.set()
        self.drain()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def drain(self) -> None:
        """End every stream (the server is going away: devices reconnect, to another replica) and take no new
        ones."""
        self.draining = True
        for queues in list(self._queues.values()):
            for queue in list(queues):
                queue.close()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    # ------------------------------------------------------------------------------------------- streams
    def subscribe(self, device_id: str) -> WakeQueue:
        queue = WakeQueue(device_id, self._next_slot)
        self._slots[queue.slot].add(queue)
        self._next_slot = (self._next_slot + 1) % len(self._slots)
        queues = self._queues.get(device_id)
        if queues is None:
            queues = self._queues[device_id] = set()
            CONNECTED_DEVICES.inc()
        queues.add(queue)
        STREAMS.inc()
        return queue

    def unsubscribe(self, queue: WakeQueue) -> None:
        queue.close()
        self._slots[queue.slot].discard(queue)
        queues = self._queues.get(queue.device_id)
        if queues is None or queue not in queues:
            return
        queues.discard(queue)
        STREAMS.dec()
        if not queues:
            del self._queues[queue.device_id]
            CONNECTED_DEVICES.dec()

    def connected(self, device_id: str) -> bool:
        return device_id in self._queues

    @property
    def connected_devices(self) -> int:
        return len(self._queues)

    @property
    def stream_count(self) -> int:
        return sum(len(queues) for queues in self._queues.values())

    def wake(self, device_id: str, reason: str) -> int:
        """Wake the streams of one device held by this process; returns how many took it."""
        return sum(queue.put(reason) for queue in self._queues.get(device_id, ()))

    async def wake_all(self, reason: str) -> int:
        """Wake every connected device once (in batches, letting the event loop breathe)."""
        woken = 0
        for index, device_id in enumerate(list(self._queues)):
            woken += self.wake(device_id, reason) > 0
            if index % WAKE_ALL_BATCH == WAKE_ALL_BATCH - 1:
                await asyncio.sleep(0)
        return woken

    # ------------------------------------------------------------------------------------------- listener
    def _on_notification(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        device_id, _, reason = payload.partition(":")
        NOTIFICATIONS.labels("yes" if device_id in self._queues else "no").inc()
        self.wake(device_id, reason or "command")

    async def _listen_forever(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                connection = await asyncpg.connect(
                    self._dsn, timeout=10, server_settings={"application_name": "corral-push"}
                )
            except Exception as exc:  # whatever it is, try again later: this task must not die
                log.warning("push: cannot connect to LISTEN: %s", exc or type(exc).__name__)
            else:
                try:
                    await self._listen(connection)
                except Exception as exc:
                    if not self._stopping.is_set():
                        log.warning("push: LISTEN connection lost: %s", exc or type(exc).__name__)
                finally:
                    await self._forget(connection)
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 60:
                attempt = 0
            low, high = self._backoff
            ceiling = min(high, low * 2**attempt)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), random.uniform(ceiling / 2, ceiling))

    async def _listen(self, connection: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        await connection.add_listener(WAKE_CHANNEL, self._on_notification)
        self.listener_pid = connection.get_server_pid()
        self._listening.set()
        LISTENER_UP.inc()
        if not self._listened_before:
            self._listened_before = True
            log.info("push: listening on %s (backend pid %s)", WAKE_CHANNEL, self.listener_pid)
        else:
            LISTENER_RECONNECTS.inc()
            woken = await self.wake_all("resync")
            log.warning("push: LISTEN re-established; woke %d connected device(s) once", woken)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._check_seconds)
            if lost.is_set() or connection.is_closed():
                raise ConnectionError("the server closed the connection")
            # A silent network failure shows only when something is sent: check now and then.
            await connection.fetchval("SELECT 1", timeout=10)

    async def _forget(self, connection: asyncpg.Connection) -> None:
        if self._listening.is_set():
            self._listening.clear()
            LISTENER_UP.dec()
        self.listener_pid = None
        if not connection.is_closed():
            try:
                await asyncio.wait_for(connection.close(), 5)
            except Exception:
                connection.terminate()

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._heartbeat / len(self._slots)
        due = loop.time()
        tick = 0
        while True:
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))
            for queue in list(self._slots[tick % len(self._slots)]):
                queue.ping()
            tick += 1

    async def _watch_exit(self) -> None:
        while not self.draining:
            if _uvicorn_exiting():
                log.info("push: server exiting; ending %d wake-up stream(s)", self.stream_count)
                self.drain()
            await asyncio.sleep(0.5)
