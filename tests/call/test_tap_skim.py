"""The stream tap's skimming (content deltas not decoded) records exactly what full decoding does.

Every variant of the real capture (LF, CRLF, CR, with and without ``[DONE]`` or the final blank
line, an in-stream error, a stream cut before its usage) is fed to the transport's body tap in
arbitrary chunks, with skimming and with it disabled, and with held chunks scanned at the end or
every few hundred bytes; the events the two record must be equal field by field, except the id
and the timings.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.call.attempt import Attempt
from ledger.call.route import Target
from ledger.call.tap import BodyTap
from ledger.events import CallEvent
from tests.call.test_wire import CAPTURE, DONE, VARIANTS

if TYPE_CHECKING:
    from ledger.journal import Journal

ERROR_EVENT = (
    b'data: {"error": {"message": "boom", "type": "server_error", "code": "oops"}, "status_code": 500}\n\n'
)
LONG = b"".join(  # a longer stream: the capture's first event, 200 content deltas, then the rest
    [CAPTURE.split(b"\n\n")[0] + b"\n\n"]
    + [b'data: {"id":"x","choices":[{"delta":{"content":"tok%d"},"index":0}]}\n\n' % i for i in range(200)]
    + [b"\n\n".join(CAPTURE.split(b"\n\n")[1:])]
)
_LAST = json.loads(CAPTURE.split(b"\n\n")[-2][len(b"data: ") :])
NULL_USAGE = b"".join(  # OpenAI's include_usage style: "usage": null in every chunk, then a usage-only one
    [LONG.split(b"\n\n")[0] + b"\n\n"]
    + [
        b'data: {"id":"x","choices":[{"delta":{"content":"t%d"},"index":0}],"usage":null}\n\n' % i
        for i in range(50)
    ]
    + [
        b'data: {"id":"x","choices":[{"delta":{},"finish_reason":"stop","index":0}],"usage":null}\n\n',
        b"data: " + json.dumps({"id": "x", "choices": [], "usage": _LAST["usage"]}).encode() + b"\n\n",
    ]
)
BODIES = {
    **VARIANTS,
    "long": LONG,
    "long+done": LONG + DONE,
    "usage: null in every delta": NULL_USAGE + DONE,
    "error mid-stream": CAPTURE.split(b"\n\n", 2)[0] + b"\n\n" + ERROR_EVENT + DONE,
    "cut before usage": b"\n\n".join(CAPTURE.split(b"\n\n")[:3]) + b"\n\n",
    "done, no usage": b"\n\n".join(CAPTURE.split(b"\n\n")[:3]) + b"\n\n" + DONE,
}


class _Collect:
    """Stands in for the journal: the tap under test hands it the finished event."""

    def __init__(self) -> None:
        self.events: list[CallEvent] = []
        self.open_attempts: set[object] = set()

    def append(self, event: CallEvent) -> None:
        self.events.append(event)


def _record(
    chunks: list[bytes], skim: bool, whole: bool, scan_bytes: int | None = None, big_event: int | None = None
) -> CallEvent:
    sink = _Collect()
    journal = cast("Journal", sink)  # a stand-in: Attempt only calls append and open_attempts on it
    attempt = Attempt(
        journal, Target("cerebras", "cerebras", "chat.completions"), "p", (), "gpt-oss-120b", "transport"
    )
    attempt.http_status = 200
    attempt.stream = True
    tap = BodyTap(attempt, "", httpx)
    tap.can_skim = skim
    if scan_bytes is not None:
        tap.scan_bytes = scan_bytes
    if big_event is not None:  # read events longer than this through the skeleton
        tap.big_event = big_event
    for chunk in chunks:
        tap.feed(chunk)
    if whole:
        tap.end()
    else:
        tap.cut("body cut: ReadError")
    (event,) = sink.events
    return event


def _comparable(e: CallEvent) -> CallEvent:
    return replace(
        e,
        event_id="-",
        occurred_at=e.occurred_at.replace(microsecond=0, second=0),
        latency_us=None,
        ttft_us=None if e.ttft_us is None else 0,
    )


def _cut(body: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize("name", sorted(BODIES))
@settings(max_examples=60, deadline=None)
@given(data=st.data(), whole=st.booleans(), scan_bytes=st.sampled_from([None, 1, 200, 1000]))
def test_skimming_records_what_full_decoding_does(
    name: str, data: st.DataObject, whole: bool, scan_bytes: int | None
) -> None:
    body = BODIES[name]
    # servers flush per event, so most chunks end on an event boundary (where skimming starts)
    boundaries = [i + 2 for i in range(len(body)) if body.startswith(b"\n\n", i)] or [0]
    cuts = data.draw(st.lists(st.one_of(st.sampled_from(boundaries), st.integers(0, len(body))), max_size=12))
    chunks = _cut(body, cuts)
    skimmed = _record(
        chunks, skim=True, whole=whole, scan_bytes=scan_bytes
    )  # held chunks scanned mid-stream too
    decoded = _record([body], skim=False, whole=whole)
    assert _comparable(skimmed) == _comparable(decoded)


@pytest.mark.parametrize("name", sorted(BODIES))
@settings(max_examples=40, deadline=None)
@given(data=st.data(), whole=st.booleans(), big_event=st.sampled_from([1, 40, 300]), skim=st.booleans())
def test_reading_big_events_through_the_skeleton_records_what_full_decoding_does(
    name: str, data: st.DataObject, whole: bool, big_event: int, skim: bool
) -> None:
    """The Skeleton path (taken for events over 1 MiB) made to run on every event of every
    variant, at any chunk boundaries: the same event as decoding the body whole."""
    body = BODIES[name]
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    big = _record(_cut(body, cuts), skim=skim, whole=whole, big_event=big_event)
    decoded = _record([body], skim=False, whole=whole)
    assert _comparable(big) == _comparable(decoded)


def test_the_capture_is_priced_from_its_last_event_when_skimmed() -> None:
    event = _record(_cut(LONG + DONE, list(range(0, len(LONG), 37))), skim=True, whole=True)
    last = json.loads(CAPTURE.split(b"\n\n")[-2][len(b"data: ") :])
    usage: dict[str, Any] = last["usage"]
    assert event.status == "ok" and event.usage is not None
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert event.upstream_id == last["id"]


def test_an_error_after_many_deltas_is_seen_when_skimmed() -> None:
    body = LONG.rsplit(b"\n\n", 2)[0] + b"\n\n" + ERROR_EVENT
    event = _record(_cut(body, list(range(0, len(body), 50))), skim=True, whole=True)
    assert (event.status, event.http_status, event.error_type, event.error_code) == (
        "error",
        500,
        "server_error",
        "oops",
    )


def test_skimmed_chunks_are_held_not_decoded_until_a_scan() -> None:
    """After the first event a chunk costs one append; the scan decodes only marked events."""
    sink = _Collect()
    attempt = Attempt(sink, Target("cerebras", "cerebras", "chat.completions"), "p", (), "m", "transport")  # type: ignore[arg-type]
    attempt.http_status, attempt.stream = 200, True
    tap = BodyTap(attempt, "", httpx)
    events = LONG.split(b"\n\n")[:-1]
    tap.feed(events[0] + b"\n\n")
    assert tap.skim and attempt.upstream_id is not None
    decoded: list[str] = []
    read = attempt.read_event

    def reading(data: str) -> bool:
        decoded.append(data)
        return read(data)

    attempt.read_event = reading  # type: ignore[method-assign]
    for ev in events[1:]:
        tap.feed(ev + b"\n\n")
    assert decoded == [] and len(tap.buf) == len(events) - 1
    tap.end()
    # of 200 content deltas and the capture's other events, only its last (finish_reason + usage)
    assert [json.loads(d).get("usage") is not None for d in decoded] == [True]
    (event,) = sink.events
    assert event.status == "ok" and event.usage is not None
