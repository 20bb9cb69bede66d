"""The Server-Sent Events parser (WHATWG HTML §9.2.6)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from corral_agent.sse import ServerSentEvent, SSEParser, iter_events


def test_wake_event_with_json_data_and_heartbeat_comments() -> None:
    parser = SSEParser()
    events = parser.feed(': heartbeat\n\nevent: wake\ndata: {"reason": "command"}\n\n: heartbeat\n\n')
    assert events == [ServerSentEvent(event="wake", data='{"reason": "command"}')]
    assert events[0].json() == {"reason": "command"}


def test_any_chunking_and_line_endings_give_the_same_events() -> None:
    text = "event: wake\r\ndata: a\r\ndata:b\r\n\r\nid: 7\rdata:  spaced\r\rretry: 3000\nevent: x\ndata\n\n"
    whole = SSEParser().feed(text)
    for size in (1, 2, 3, 5):
        parser = SSEParser()
        chunked = [e for i in range(0, len(text), size) for e in parser.feed(text[i : i + size])]
        assert chunked == whole
    assert [(e.event, e.data, e.id) for e in whole] == [
        ("wake", "a\nb", None),
        ("message", " spaced", "7"),
        ("x", "", "7"),
    ]
    assert whole[2].retry == 3000


def test_an_event_without_data_is_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed("event: wake\n\n") == []
    assert parser.feed("data: x\n\n") == [ServerSentEvent(event="message", data="x")]  # the type was reset


def test_unknown_fields_are_ignored_and_bad_json_is_none() -> None:
    events = SSEParser().feed("foo: bar\ndata: not json\n\n")
    assert events == [ServerSentEvent(data="not json")]
    assert events[0].json() is None


async def test_iter_events_over_lines() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [": hb", "", "event: wake", 'data: {"reason":"x"}', "", "data: second", ""]:
            yield line

    events = [e async for e in iter_events(lines())]
    assert [e.event for e in events] == ["wake", "message"]
