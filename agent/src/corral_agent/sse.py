"""A Server-Sent Events parser (WHATWG HTML §9.2.6), enough for Corral's wake-up stream (§7)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """The data as JSON (``None`` when it is empty or not JSON)."""
        try:
            return json.loads(self.data) if self.data else None
        except ValueError:
            return None


class SSEParser:
    """Feed it lines (without their line ending) or raw text; it returns the events that complete."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._pending = ""
        self.last_event_id: str | None = None
        self.retry: int | None = None

    def feed_line(self, line: str) -> ServerSentEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's heartbeat
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None  # unknown fields are ignored

    def feed(self, text: str) -> list[ServerSentEvent]:
        """Raw text in any chunking; lines end with CRLF, LF or CR."""
        buffer = self._pending + text
        events = []
        position = 0
        for match in _LINE_END.finditer(buffer):
            if match.group() == "\r" and match.end() == len(buffer):
                break  # perhaps the first half of a CRLF split across chunks
            event = self.feed_line(buffer[position : match.start()])
            position = match.end()
            if event is not None:
                events.append(event)
        self._pending = buffer[position:]
        return events

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self.last_event_id,
            retry=self.retry,
        )
        self._event = ""
        self._data = []
        return event


async def iter_events(lines: AsyncIterable[str]) -> AsyncIterator[ServerSentEvent]:
    """Events from an async iterable of lines (e.g. ``httpx.Response.aiter_lines()``)."""
    parser = SSEParser()
    async for line in lines:
        event = parser.feed_line(line.rstrip("\r\n"))
        if event is not None:
            yield event
