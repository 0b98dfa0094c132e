"""Wire: the SSE decoder, usage, time_info and error bodies, on the real captures in shared/wire."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger.call.wire import (
    SSEDecoder,
    SSEEvent,
    WireError,
    error_from,
    time_info_from,
    usage_from,
)
from ledger.events import MAX_TOKENS, TimeInfo, Usage
from tests.helpers import WIRE

CAPTURE = (WIRE / "stream.sse").read_bytes()
COMPLETION = json.loads((WIRE / "chat_completion.json").read_text())
MINIMAL = json.loads((WIRE / "chat_completion_minimal.json").read_text())
ERRORS = [json.loads(line) for line in (WIRE / "errors.jsonl").read_text().splitlines() if line.strip()]

DONE = b"data: [DONE]\n\n"


def _expected_events(body: bytes) -> list[SSEEvent]:
    """What the capture says, read independently of the decoder: blank-line separated `data:` blocks."""
    text = body.decode().replace("\r\n", "\n").replace("\r", "\n")
    out = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln]
        if lines:
            assert all(ln.startswith("data: ") for ln in lines)
            out.append(SSEEvent(None, "\n".join(ln[len("data: ") :] for ln in lines)))
    return out


def _variants() -> dict[str, bytes]:
    lf = CAPTURE
    assert b"\r" not in lf and lf.endswith(b"\n\n")
    crlf = lf.replace(b"\n", b"\r\n")
    cr = lf.replace(b"\n", b"\r")
    return {
        "lf": lf,
        "lf+done": lf + DONE,
        "lf, no final blank line": lf[:-2],
        "lf+done, no final blank line": lf + DONE[:-2],
        "crlf": crlf,
        "crlf+done": crlf + DONE.replace(b"\n", b"\r\n"),
        "crlf, no final blank line": crlf[:-4],
        "cr": cr,
    }


VARIANTS = _variants()


def _decode(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def _cut(body: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(points)]


def test_whole_capture_gives_five_events_with_usage_on_the_last() -> None:
    events = _decode([CAPTURE])
    assert events == _expected_events(CAPTURE)
    assert len(events) == 5 and all(e.event is None for e in events)
    chunks = [json.loads(e.data) for e in events]
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 5
    assert "usage" in chunks[-1] and all("usage" not in c for c in chunks[:-1])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_decodes_like_the_capture(name: str) -> None:
    body = VARIANTS[name]
    expected = _expected_events(CAPTURE) + ([SSEEvent(None, "[DONE]")] if b"[DONE]" in body else [])
    assert _decode([body]) == expected
    assert _decode([bytes([b]) for b in body]) == expected  # one byte at a time: every CRLF split


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VARIANTS)), st.data())
def test_arbitrary_chunk_boundaries_give_the_same_events(name: str, data: st.DataObject) -> None:
    body = VARIANTS[name]
    crlf_middles = [i + 1 for i in range(len(body) - 1) if body[i : i + 2] == b"\r\n"]
    cuts = data.draw(
        st.lists(
            st.integers(0, len(body)) | (st.sampled_from(crlf_middles) if crlf_middles else st.nothing()),
            max_size=60,
        )
    )
    assert _decode(_cut(body, cuts)) == _decode([body])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(CAPTURE)), max_size=40), st.booleans())
def test_chunks_with_empty_pieces_between_them(cuts: list[int], crlf: bool) -> None:
    body = VARIANTS["crlf" if crlf else "lf"]
    cuts = [min(c, len(body)) for c in cuts]
    chunks = [piece for c in _cut(body, cuts) for piece in (c, b"")]
    assert _decode(chunks) == _decode([body])


def test_comments_event_names_and_multiline_data() -> None:
    body = b': keep-alive\r\nevent: error\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata:no-space\n\n'
    expected = [SSEEvent("error", '{"a":\n1}'), SSEEvent(None, "no-space")]
    assert _decode([body]) == expected
    assert _decode([bytes([b]) for b in body]) == expected


def test_a_multibyte_character_split_across_chunks() -> None:
    body = 'data: {"content":"Olá 👋"}\n\n'.encode()
    cut = body.index("👋".encode()) + 2
    assert _decode([body[:cut], body[cut:]]) == [SSEEvent(None, '{"content":"Olá 👋"}')]


# -- usage --------------------------------------------------------------------------------------


def _last_chunk() -> dict[str, Any]:
    chunk: dict[str, Any] = json.loads(_decode([CAPTURE])[-1].data)
    return chunk


def test_usage_from_the_docs_example() -> None:
    assert usage_from(COMPLETION) == (Usage(69, 0, 59, 0, 128), None)


def test_usage_from_the_minimal_capture_treats_absent_details_as_zero() -> None:
    assert "completion_tokens_details" not in MINIMAL["usage"]
    assert usage_from(MINIMAL) == (Usage(22, 0, 4, 0, 26), None)


def test_usage_from_the_last_chunk_of_the_stream() -> None:
    assert usage_from(_last_chunk()) == (Usage(22, 0, 3, 0, 25), None)
    first = json.loads(_decode([CAPTURE])[0].data)
    usage, reason = usage_from(first)
    assert usage is None and reason


def _usage(**changes: Any) -> dict[str, Any]:
    u: dict[str, Any] = {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 40},
        "completion_tokens_details": {"reasoning_tokens": 20},
    }
    for k, v in changes.items():
        if v is _DROP:
            u.pop(k)
        else:
            u[k] = v
    return {"usage": u}


_DROP = object()


def test_details_present_null_or_absent() -> None:
    assert usage_from(_usage()) == (Usage(100, 40, 50, 20, 150), None)
    assert usage_from(_usage(prompt_tokens_details=None, completion_tokens_details=None)) == (
        Usage(100, 0, 50, 0, 150),
        None,
    )
    assert usage_from(_usage(prompt_tokens_details={}, completion_tokens_details={})) == (
        Usage(100, 0, 50, 0, 150),
        None,
    )
    assert usage_from(_usage(total_tokens=_DROP)) == (Usage(100, 40, 50, 20, 150), None)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"usage": None},
        {"usage": []},
        {"usage": "100"},
        _usage(prompt_tokens=-1, total_tokens=49),
        _usage(completion_tokens=-50, total_tokens=50),
        _usage(prompt_tokens=True),
        _usage(completion_tokens=False, total_tokens=100),
        _usage(prompt_tokens=100.0),
        _usage(completion_tokens=50.5),
        _usage(prompt_tokens="100"),
        _usage(prompt_tokens=None),
        _usage(prompt_tokens=_DROP),
        _usage(completion_tokens=_DROP),
        _usage(total_tokens=151),
        _usage(total_tokens=149),
        _usage(total_tokens="150"),
        _usage(total_tokens=None),
        _usage(prompt_tokens_details={"cached_tokens": 101}),
        _usage(prompt_tokens_details={"cached_tokens": -1}),
        _usage(prompt_tokens_details={"cached_tokens": 1.0}),
        _usage(prompt_tokens_details={"cached_tokens": True}),
        _usage(prompt_tokens_details=[40]),
        _usage(completion_tokens_details={"reasoning_tokens": 51}),
        _usage(completion_tokens_details="20"),
        _usage(prompt_tokens=MAX_TOKENS + 1, total_tokens=MAX_TOKENS + 51),
        _usage(completion_tokens=10**12, total_tokens=10**12 + 100),
        _usage(prompt_tokens=MAX_TOKENS, completion_tokens=MAX_TOKENS, total_tokens=2 * MAX_TOKENS),
    ],
)
def test_invalid_usage_is_unknown_with_a_reason(body: dict[str, Any]) -> None:
    usage, reason = usage_from(body)
    assert usage is None
    assert isinstance(reason, str) and reason


def test_counts_up_to_max_tokens_are_accepted() -> None:
    body = _usage(prompt_tokens=MAX_TOKENS - 50, total_tokens=MAX_TOKENS)
    assert usage_from(body) == (Usage(MAX_TOKENS - 50, 40, 50, 20, MAX_TOKENS), None)
    body = {"usage": {"prompt_tokens": MAX_TOKENS, "completion_tokens": 0, "total_tokens": MAX_TOKENS}}
    assert usage_from(body) == (Usage(MAX_TOKENS, 0, 0, 0, MAX_TOKENS), None)


# -- time_info ----------------------------------------------------------------------------------


def test_time_info_in_microseconds() -> None:
    assert time_info_from(COMPLETION) == TimeInfo(4628, 3838, 40404, 50132)
    assert time_info_from(MINIMAL) == TimeInfo(111, 2037, 3548, 6747)
    assert time_info_from(_last_chunk()) == TimeInfo(534, 1281, 3694, 7520)


@pytest.mark.parametrize("created", [1769729480, 1769729480.0787008, None])
def test_time_info_with_int_or_float_created(created: float | None) -> None:
    info = dict(COMPLETION["time_info"])
    if created is None:
        info.pop("created")
    else:
        info["created"] = created
    assert time_info_from({"time_info": info}) == TimeInfo(4628, 3838, 40404, 50132)


def test_time_info_absent_or_broken() -> None:
    assert time_info_from({}) is None
    assert time_info_from({"time_info": None}) is None
    assert time_info_from({"time_info": [1, 2]}) is None
    odd = {"queue_time": -1, "prompt_time": "0.1", "completion_time": True, "total_time": float("nan")}
    assert time_info_from({"time_info": odd}) == TimeInfo(None, None, None, None)
    assert time_info_from({"time_info": {"queue_time": 0, "total_time": 2}}) == TimeInfo(
        0, None, None, 2_000_000
    )
    assert time_info_from({"time_info": {"total_time": float("inf")}}) == TimeInfo(None, None, None, None)


# -- errors -------------------------------------------------------------------------------------

EXPECTED_ERRORS = [
    WireError(401, "invalid_request_error", "wrong_api_key"),
    WireError(403, "authentication_error", None),
    WireError(404, "not_found_error", "model_not_found"),
    WireError(429, "too_many_requests_error", "queue_exceeded"),
    WireError(429, "too_many_tokens_error", "token_quota_exceeded"),
    WireError(500, "server_error", "internal_error"),
]


def _message_of(record: dict[str, Any]) -> str:
    body = record.get("body") or record["stream_event"]
    inner = body.get("error", body)
    return str(inner.get("message") or inner.get("detail"))


@pytest.mark.parametrize(
    ("record", "expected"),
    list(zip(ERRORS, EXPECTED_ERRORS, strict=True)),
    ids=[f"{r['status']}-{i}" for i, r in enumerate(ERRORS)],
)
def test_error_from_every_recorded_error(record: dict[str, Any], expected: WireError) -> None:
    body = record.get("body", record.get("stream_event"))
    err = error_from(record["status"], body)
    assert err == expected
    message = _message_of(record)
    assert message not in repr(err)
    assert all(message not in str(v) for v in (err.status, err.type, err.code))


def test_errors_jsonl_has_every_shape() -> None:
    assert len(ERRORS) == len(EXPECTED_ERRORS)
    assert any("detail" in (r.get("body") or {}) for r in ERRORS)
    assert any("stream_event" in r for r in ERRORS)


def test_error_from_odd_bodies() -> None:
    assert error_from(502, None) == WireError(502, None, None)
    assert error_from(502, "<html>Bad gateway</html>") == WireError(502, None, None)
    assert error_from(None, [1, 2]) == WireError(None, None, None)
    assert error_from(404, {"detail": "Not Found"}) == WireError(404, None, None)
    assert error_from(200, {"error": {"type": "server_error"}, "status_code": "500"}) == WireError(
        200, "server_error", None
    )
    long = "x" * 5000
    err = error_from(400, {"type": long, "code": long, "message": "secret prompt text"})
    assert len(err.type or "") <= 100 and len(err.code or "") <= 100
    assert "secret" not in repr(err)


# -- never raise --------------------------------------------------------------------------------

USAGE_KEYS = [
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "cached_tokens",
    "reasoning_tokens",
    "time_info",
    "queue_time",
    "prompt_time",
    "completion_time",
    "total_time",
    "error",
    "status_code",
    "detail",
    "type",
    "code",
    "message",
]

json_ish = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.integers(-2, MAX_TOKENS + 2),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(USAGE_KEYS) | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
count_ish = (
    st.integers(-2, 60) | st.sampled_from([MAX_TOKENS, MAX_TOKENS + 1, True, 1.0, "3", None]) | json_ish
)
details = (
    st.none()
    | json_ish
    | st.fixed_dictionaries({}, optional={"cached_tokens": count_ish, "reasoning_tokens": count_ish})
)
usage_ish = st.fixed_dictionaries(
    {},
    optional={
        "prompt_tokens": count_ish,
        "completion_tokens": count_ish,
        "total_tokens": count_ish,
        "prompt_tokens_details": details,
        "completion_tokens_details": details,
    },
)
objects = st.fixed_dictionaries(
    {},
    optional={
        "usage": usage_ish | json_ish,
        "time_info": json_ish,
        "error": json_ish,
        "status_code": json_ish,
        "detail": json_ish,
        "type": json_ish,
        "code": json_ish,
    },
)


@settings(max_examples=400, deadline=None)
@given(objects | st.dictionaries(st.text(max_size=5), json_ish, max_size=3), st.none() | st.integers())
@example(
    {"usage": {"prompt_tokens": 1, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 2}}},
    None,
)
@example(
    {"usage": {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 2}}},
    None,
)
def test_parsers_never_raise_on_json_ish_input(body: dict[str, Any], status: int | None) -> None:
    usage, reason = usage_from(body)
    assert (usage is None) != (reason is None)
    if usage is not None:
        assert 0 <= usage.cached_tokens <= usage.prompt_tokens <= MAX_TOKENS
        assert 0 <= usage.reasoning_tokens <= usage.completion_tokens <= MAX_TOKENS
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    info = time_info_from(body)
    assert info is None or isinstance(info, TimeInfo)
    err = error_from(status, body)
    assert isinstance(err, WireError)
    assert err.type is None or isinstance(err.type, str)
    assert err.code is None or isinstance(err.code, str)


@settings(max_examples=200, deadline=None)
@given(json_ish, st.none() | st.integers())
def test_error_from_never_raises_on_any_json(body: Any, status: int | None) -> None:
    assert isinstance(error_from(status, body), WireError)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.binary(max_size=40) | st.sampled_from([b"\r", b"\n", b"\r\n", b"data:", b"event: ", b":"]),
        max_size=30,
    )
)
def test_sse_decoder_never_raises_on_arbitrary_bytes(chunks: list[bytes]) -> None:
    events = _decode(chunks)
    assert all(isinstance(e.data, str) and (e.event is None or isinstance(e.event, str)) for e in events)
    assert events == _decode([b"".join(chunks)])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.binary(max_size=60) | st.sampled_from([b'"', b"\\", b'\\"', b"\n\n", b'{"a":"']), max_size=30
    ),
    st.integers(0, 8),
)
def test_the_skeleton_never_raises_and_never_grows(chunks: list[bytes], keep: int) -> None:
    """Hostile bytes (any quotes and backslashes, cut anywhere) go through the skeleton without an
    exception, and what comes out is never longer than what went in; in chunks or whole, the
    same bytes come out."""
    from ledger.call.wire import Skeleton

    pieces, whole = Skeleton(keep), Skeleton(keep)
    for c in chunks:
        pieces.feed(c)
    whole.feed(b"".join(chunks))
    out = pieces.take()
    assert out == whole.take()
    assert len(out) <= sum(map(len, chunks))


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=30),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
        max_leaves=20,
    ),
    st.integers(0, 12),
    st.lists(st.integers(1, 50), min_size=1, max_size=5),
)
def test_the_skeleton_of_json_is_that_json_with_its_long_strings_emptied(
    doc: Any, keep: int, sizes: list[int]
) -> None:
    from ledger.call.wire import Skeleton

    def emptied(v: Any) -> Any:
        if isinstance(v, str):
            return v if len(json.dumps(v, ensure_ascii=False).encode()) - 2 <= keep else ""
        if isinstance(v, list):
            return [emptied(x) for x in v]
        if isinstance(v, dict):
            return {emptied(k): emptied(x) for k, x in v.items()}
        return v

    data = json.dumps(doc, ensure_ascii=False).encode()
    sk, at, i = Skeleton(keep), 0, 0
    while at < len(data):
        sk.feed(data[at : at + sizes[i % len(sizes)]])
        at, i = at + sizes[i % len(sizes)], i + 1
    try:
        want = emptied(doc)
    except TypeError:  # two keys emptied to "" collide: the dict keeps the last, as JSON does
        return
    got = json.loads(sk.take())
    if isinstance(doc, dict) and len({emptied(k) for k in doc}) < len(doc):
        return  # (keys that collide once emptied: compared no further)
    assert got == want
