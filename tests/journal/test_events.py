"""Events: the spool encoding round-trips, ids are UUIDv7 in creation order, garbage never decodes."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger import events as events_mod
from ledger.events import (
    ROUTES,
    STATUSES,
    CallEvent,
    TimeInfo,
    Usage,
    bounded,
    new_event_id,
    normalize_tags,
)
from ledger.journal.codec import EventDecodeError, decode, encode
from tests.helpers import make_event

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

# "Odd" text: anything Unicode can encode (NUL, controls, RTL marks, U+2028, emoji, astral planes).
odd_text = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(
    ["", "\x00", "\u2028\u2029", "\ufeff", "\u202e evil", "a\r\nb", '"\\', "🧾" * 5, "\U0010ffff", "é" * 3]
)
opt_text = st.none() | odd_text
opt_int = st.none() | st.integers(-(2**63), 2**63 - 1)
counts = st.integers(0, 2**62)

zones = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=5, minutes=30)),
        timezone(-timedelta(hours=8)),
        timezone(timedelta(hours=14)),
        timezone(timedelta(seconds=-3599)),
    ]
)
instants = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=zones)

call_events = st.builds(
    CallEvent,
    event_id=st.one_of(st.builds(new_event_id), odd_text),
    occurred_at=instants,
    project=odd_text,
    route=st.sampled_from(ROUTES),
    book=odd_text,
    requested_model=opt_text,
    served_model=opt_text,
    status=st.sampled_from(STATUSES),
    http_status=opt_int,
    error_type=opt_text,
    error_code=opt_text,
    stream=st.booleans(),
    usage=st.none() | st.builds(Usage, counts, counts, counts, counts, counts),
    latency_us=opt_int,
    ttft_us=opt_int,
    time_info=st.none() | st.builds(TimeInfo, opt_int, opt_int, opt_int, opt_int),
    upstream_id=opt_text,
    lava_request_id=opt_text,
    tags=st.dictionaries(odd_text, odd_text | st.integers() | st.none(), max_size=5).map(normalize_tags),
    source=odd_text,
    note=opt_text,
)


def _sample_event(**changes: Any) -> CallEvent:
    base: dict[str, Any] = {
        "occurred_at": datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "project": "p",
        "route": "lava",
        "book": "lava",
        "served_model": "gpt-oss-120b",
        "stream": True,
        "usage": Usage(22, 0, 3, 0, 25),
        "latency_us": 1234,
        "ttft_us": 99,
        "time_info": TimeInfo(534, 1281, 3694, 7520),
        "upstream_id": "chatcmpl-1",
        "lava_request_id": "req_1",
        "tags": (("team", "ml"),),
        "source": "wrapper",
        "note": None,
    }
    return make_event(**{**base, **changes})


@settings(max_examples=400, deadline=None)
@given(call_events)
def test_decode_of_encode_is_identity(event: CallEvent) -> None:
    line = encode(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one spool line, whatever the text holds
    back = decode(line)
    assert back == bounded(event)  # the event itself, unless a field was past the ledger's limits
    assert bounded(back) is back
    assert back.occurred_at.utcoffset() == timedelta(0)
    assert type(back.stream) is bool
    assert encode(back) == line


def test_decode_of_encode_on_a_realistic_event() -> None:
    event = _sample_event()
    assert decode(encode(event)) == event
    assert json.loads(encode(event))[0] == 2  # the spool version leads the record


def test_a_version_1_record_from_an_older_ledger_still_decodes() -> None:
    """A spool segment left by the previous release (22 fields, five usage counts) is read with
    what it did not say left at its defaults: nothing in a dead process's spool is lost."""
    event = _sample_event()
    v2 = json.loads(encode(event))
    v1 = [1, *v2[1:22]]
    if v1[13] is not None:
        v1[13] = v1[13][:5]
    back = decode(json.dumps(v1).encode() + b"\n")
    assert back.endpoint == "chat.completions" and back.service_tier is None and back.finish_reason is None
    assert back.usage == (
        None
        if event.usage is None
        else replace(event.usage, accepted_prediction_tokens=0, rejected_prediction_tokens=0, image_tokens=0)
    )
    assert back.event_id == event.event_id and back.tags == event.tags


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec=None, categories=["Cs"]), min_size=1, max_size=3), odd_text)
@example("\udcff", "x")  # what os.fsdecode() makes of a non-UTF-8 file name
def test_a_lone_surrogate_in_a_tag_still_round_trips(odd: str, other: str) -> None:
    """Tags are caller text (``str(v)`` of anything); a lone surrogate must not lose the event."""
    event = _sample_event(tags=normalize_tags({"file": odd, other: odd}), note=None)
    assert decode(encode(event)) == event


def test_normalize_tags() -> None:
    assert normalize_tags(None) == () and normalize_tags({}) == ()
    assert normalize_tags({"b": 2, "a": "x", "c": None}) == (("a", "x"), ("b", "2"))
    with pytest.raises(TypeError):
        normalize_tags([("a", "b")])  # type: ignore[arg-type]


# -- ids ------------------------------------------------------------------------------------------


def _ms(event_id: str) -> int:
    return uuid.UUID(event_id).int >> 80


def test_a_hundred_thousand_ids_are_uuid7_unique_and_increasing() -> None:
    start_ms = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(100_000)]
    end_ms = time.time_ns() // 1_000_000
    assert all(UUID7.match(i) for i in ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(
        u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i
        for u, i in zip(parsed, ids, strict=True)
    )
    assert len(set(ids)) == len(ids)
    assert all(a < b for a, b in itertools.pairwise(ids))  # as strings: what the database sorts
    assert all(a.int < b.int for a, b in itertools.pairwise(parsed))
    # the embedded clock is the wall clock (it may run ahead by one ms per 4096 ids in a burst)
    assert start_ms <= _ms(ids[0]) and _ms(ids[-1]) <= end_ms + 1 + len(ids) // 4096


def test_ids_made_on_many_threads_are_unique_and_each_thread_sees_them_increase() -> None:
    per_thread, n_threads = 12_500, 8
    results: list[list[str]] = [[] for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads)

    def work(k: int) -> None:
        barrier.wait()
        results[k] = [new_event_id() for _ in range(per_thread)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for r in results for i in r]
    assert len(everything) == per_thread * n_threads
    assert len(set(everything)) == len(everything)
    assert all(UUID7.match(i) for i in everything)
    for r in results:
        assert all(a < b for a, b in itertools.pairwise(r))


class _Clock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def time_ns(self) -> int:
        return self.ns


def test_ids_stay_ordered_when_the_clock_stalls_or_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(time.time_ns())
    monkeypatch.setattr(events_mod, "time", SimpleNamespace(time_ns=clock.time_ns))
    frozen = [new_event_id() for _ in range(10_000)]  # more than the 4096 a millisecond holds
    clock.ns -= 3_600 * 10**9  # an NTP step back of an hour
    stepped_back = [new_event_id() for _ in range(100)]
    ids = frozen + stepped_back
    assert len(set(ids)) == len(ids)
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert all(UUID7.match(i) for i in ids)
    assert _ms(frozen[-1]) > _ms(frozen[0])  # the counter ran out and borrowed the next millisecond
    assert _ms(ids[-1]) - _ms(ids[0]) <= 10_100 // 4096 + 1


# -- garbage -------------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
@example(b"")
@example(b"\n")
@example(b"null")
@example(b"[]")
@example(b"[1]")
@example(b"[2," + b"0," * 20 + b"0]")
@example(b"\xff\xfe\x00")
@example(b'"\\ud800"')
def test_decode_of_garbage_raises_event_decode_error_only(data: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode(data)


@pytest.mark.parametrize("kind", ["array", "object", "digits"])
def test_decode_of_deeply_nested_or_huge_garbage_raises_event_decode_error(kind: str) -> None:
    """A corrupt spool line must be set aside, not crash the writer with RecursionError."""
    data = {"array": b"[" * 100_000, "object": b'{"a":' * 100_000, "digits": b"1" * 10_000}[kind]
    try:
        decode(data)
    except EventDecodeError:
        return
    except BaseException as exc:  # noqa: BLE001 - report the type without dumping the input
        pytest.fail(f"decode raised {type(exc).__name__}, not EventDecodeError")
    pytest.fail("decode accepted garbage")


@settings(max_examples=150, deadline=None)
@given(call_events, st.data())
def test_a_torn_record_never_decodes(event: CallEvent, data: st.DataObject) -> None:
    line = encode(event)
    cut = data.draw(st.integers(0, len(line.rstrip()) - 1))
    with pytest.raises(EventDecodeError):
        decode(line[:cut])


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_record_with_one_field_replaced_by_json_noise_is_refused_or_decoded(data: st.DataObject) -> None:
    """Never an exception other than EventDecodeError, whatever a field holds."""
    row = json.loads(encode(_sample_event()))
    index = data.draw(st.integers(0, len(row) - 1))
    row[index] = data.draw(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=3), c, max_size=3),
            max_leaves=10,
        )
    )
    try:
        decode(json.dumps(row).encode())
    except EventDecodeError:
        pass


_GOOD = json.loads(encode(_sample_event()))


WRONG_TYPES = {
    "event_id not text": (1, 12345),
    "project not text": (3, ["p"]),
    "http_status as text": (9, "200"),
    "stream as text": (12, "false"),  # bool("false") would read as True
    "token counts as text": (13, ["22", "0", "3", "0", "25"]),
    "usage as an object": (13, {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}),
    "a tag that is not a pair": (19, ["ab"]),
    "note not text": (21, 7),
    "an endpoint no one knows": (22, "responses"),
    "service_tier not text": (23, 1),
    "finish_reason not text": (24, ["stop"]),
    "rate-limit headroom as text": (25, "12"),
    "usage of five counts in a version 2 record": (13, [22, 0, 3, 0, 25]),
}


def test_a_record_of_the_right_shape_with_wrong_types_is_refused() -> None:
    """Such a record decodes today and then fails later, in pricing or the insert (see report)."""
    accepted = []
    for name, (index, value) in WRONG_TYPES.items():
        row = list(_GOOD)
        row[index] = value
        try:
            decode(json.dumps(row).encode())
        except EventDecodeError:
            continue
        accepted.append(name)
    assert accepted == []


def test_records_from_other_versions_or_shapes_are_refused() -> None:
    for row in ([3, *_GOOD[1:]], [1, *_GOOD[1:]], _GOOD[:-1], [*_GOOD, None], {"v": 1}):
        with pytest.raises(EventDecodeError):
            decode(json.dumps(row).encode())
    naive = list(_GOOD)
    naive[2] = "2025-01-02T03:04:05"
    bad_status = list(_GOOD)
    bad_status[8] = "done"
    bad_route = list(_GOOD)
    bad_route[4] = "openai"
    for row in (naive, bad_status, bad_route):
        with pytest.raises(EventDecodeError):
            decode(json.dumps(row).encode())


def test_ids_differ_across_forked_children_even_when_the_app_seeds_random() -> None:
    """Id randomness is the ledger's own: a fork, or ``random.seed`` in every worker, never makes
    two processes produce the same ids (a duplicate id would silently drop an event)."""
    import os
    import random

    read, write = os.pipe()
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            random.seed(42)
            os.write(write, (",".join(new_event_id() for _ in range(50)) + "\n").encode())
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    os.close(write)
    with os.fdopen(read) as fh:
        batches = [set(line.strip().split(",")) for line in fh if line.strip()]
    random.seed(42)
    mine = {new_event_id() for _ in range(50)}
    assert len(batches) == 2 and all(len(b) == 50 for b in batches)
    assert not (batches[0] & batches[1]) and not (mine & (batches[0] | batches[1]))
    assert {i[24:] for i in batches[0]}.isdisjoint(i[24:] for i in batches[1])  # the random tails too
