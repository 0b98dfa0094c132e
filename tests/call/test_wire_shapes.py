"""Every billed completion is recorded, from every wire shape (issue 11, part 1).

Real recorded Cerebras exchanges (``shared/wire/recorded/``, from pydantic-ai's public test
recordings) are replayed byte for byte by a loopback server (:mod:`tests.call._replay`) at odd chunk
boundaries, content-encoded the way the client asked (httpx asks for ``zstd`` and ``br`` once
``zstandard`` and ``brotli`` are installed, as they are for these tests), through the real SDKs
and the wrapper. Expected token counts come from the recorded bodies, never from ledger code.
Then the shapes that used to lose money: legacy text completions, an encoding httpx ignores,
chunks after the usage chunk, one finish chunk per choice, a stream abandoned at exit, a
single event of many megabytes, and the facts the wire carries besides usage.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

import ledger
from ledger.call.retry import retry_delay
from tests.call._replay import Answer, Replay, recorded_ids
from tests.call.test_sdk import FLAVOURS, Flavour, _drain, _maybe
from tests.helpers import WIRE, fetch_events

PROJECT = "proj-wire"
LAVA_TOKEN = "aks_live_test"
SSE = [("content-type", "text/event-stream")]
JSON_CT = [("content-type", "application/json")]
RATE_LIMIT = [  # each line is "name: value"
    cast("tuple[str, str]", tuple(line.split(": ", 1)))
    for line in (WIRE / "rate_limit_headers.txt").read_text().splitlines()
    if line.strip()
]


@pytest.fixture
def replay() -> Iterator[Replay]:
    with Replay() as server:
        yield server


def _flush() -> None:
    for j in list(ledger.journal.registry._journals.values()):
        assert j.flush(20)


def _usage(body: dict[str, Any]) -> tuple[int, int, int, int]:
    u = body["usage"]
    return (
        u["prompt_tokens"],
        (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        u["completion_tokens"],
        (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0,
    )


def _row_usage(row: dict[str, Any]) -> tuple[int, int, int, int]:
    return (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"], row["reasoning_tokens"])


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def stream_of(body: dict[str, Any], *, text: bool = False, done: bool = True, pieces: int = 5) -> bytes:
    """A stream as Cerebras sends it for ``body`` (a real non-streamed answer): a role chunk, the
    content in deltas, and the final chunk with ``finish_reason``, usage and time_info."""
    base: dict[str, Any] = {k: body[k] for k in ("id", "created", "model") if k in body}
    base["object"] = "text_completion" if text else "chat.completion.chunk"
    choice = body["choices"][0]
    content = (choice.get("text") if text else (choice.get("message") or {}).get("content")) or ""
    out = [] if text else [_event({**base, "choices": [{"delta": {"role": "assistant"}, "index": 0}]})]
    step = max(1, len(content) // pieces)
    for at in range(0, len(content), step):
        part = content[at : at + step]
        delta = {"text": part, "index": 0} if text else {"delta": {"content": part}, "index": 0}
        out.append(_event({**base, "choices": [delta]}))
    final: dict[str, Any] = {"index": 0, "finish_reason": choice.get("finish_reason") or "stop"}
    empty: dict[str, Any] = {}
    final.update({"text": ""} if text else {"delta": empty})
    out.append(
        _event(
            {
                **base,
                "choices": [final],
                "usage": body["usage"],
                **({"time_info": body["time_info"]} if "time_info" in body else {}),
            }
        )
    )
    if done:
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


# -- callers ------------------------------------------------------------------------------------


class Caller:
    """One way of making a call: an official SDK on an instrumented client, or the wrapper."""

    def __init__(self, kind: str, flavour: Flavour | None, base_url: str, *, lava: bool = False) -> None:
        self.kind, self.flavour = kind, flavour
        if flavour is None:  # the wrapper
            cls = ledger.AsyncCerebrasClient if kind == "wrapper-async" else ledger.CerebrasClient
            creds: dict[str, Any] = (
                {"lava_forward_token": LAVA_TOKEN, "lava_base_url": base_url}
                if lava
                else {"api_key": "sk-test"}
            )
            self.client: Any = cls(project=PROJECT, base_url=base_url, max_retries=0, **creds)
            return
        hooks = [_forward_hook(base_url, flavour)] if lava else []
        http_cls = flavour.http.AsyncClient if flavour.is_async else flavour.http.Client
        self.http = ledger.instrument(http_cls(event_hooks={"request": hooks}), project=PROJECT)
        api = "https://api.cerebras.ai" if lava else base_url
        self.client = flavour.sdk_client(api, LAVA_TOKEN if lava else "sk-test", self.http, 0, False)

    async def chat(self, model: str, **kw: Any) -> Any:
        messages = [{"role": "user", "content": "What is 2+2?"}]
        return await _maybe(self.client.chat.completions.create(model=model, messages=messages, **kw))

    async def text(self, model: str, **kw: Any) -> Any:
        return await _maybe(self.client.completions.create(model=model, prompt="It was a dark", **kw))

    async def close(self) -> None:
        await _maybe(self.client.close())


def _forward_hook(lava_base: str, flavour: Flavour) -> Any:
    """Through Lava's forward proxy, as the README shows (every billed endpoint)."""
    http = flavour.http

    def rewrite(request: Any) -> None:
        if request.url.path.endswith("completions"):
            request.url = http.URL(f"{lava_base}/v1/forward", params={"u": str(request.url)})
            request.headers["host"] = request.url.netloc.decode("ascii")

    async def arewrite(request: Any) -> None:
        rewrite(request)

    return arewrite if flavour.is_async else rewrite


CALLERS = [(f.id, f) for f in FLAVOURS] + [("wrapper-sync", None), ("wrapper-async", None)]
each_caller = pytest.mark.parametrize(("kind", "flavour"), CALLERS, ids=[c[0] for c in CALLERS])


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- 1. real recorded exchanges, every encoding the client asks for -------------------------------


@each_caller
def test_recorded_exchanges_through_every_caller(
    kind: str, flavour: Flavour | None, ledger_env: dict[str, str], replay: Replay, reliability: Any
) -> None:
    """All 26 recorded exchanges, as JSON and (the 200s) as streams, each event priced from the
    recorded usage, whatever content-encoding the caller's httpx asked for."""
    ids = recorded_ids()
    assert len(ids) == 26
    bodies = {rid: json.loads(Answer.recorded(rid).body) for rid in ids}

    async def go() -> list[str]:
        caller = Caller(kind, flavour, replay.base_url)
        expected = []
        try:
            for rid in ids:
                answer = Answer.recorded(rid)
                replay.queue(answer)
                model = bodies[rid].get("model", "gpt-oss-120b")
                if answer.status >= 400:
                    with pytest.raises(Exception) as info:
                        await caller.chat(model)
                    assert getattr(info.value, "status_code", None) == answer.status
                else:
                    await caller.chat(model)
                    replay.queue(
                        Answer(200, SSE + answer.headers[:0], stream_of(bodies[rid]), chunks=[3, 50, 11, 200])
                    )
                    chunks = await _drain(await caller.chat(model, stream=True))
                    assert chunks
                expected.append(rid)
        finally:
            await caller.close()
        return expected

    done = _run(go())
    _flush()
    rows = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] == "error"]
    reliability(
        load=f"26 recorded exchanges as JSON + 25 as streams, {kind}",
        fault="odd chunk boundaries, the content-encoding the caller asked for",
        inputs="shared/wire/recorded (pydantic-ai)",
        expected=51,
        recorded=len(rows),
        lost=51 - len(rows),
    )
    assert len(done) == 26 and len(ok) == 2 * 25 and len(errors) == 1
    want = sorted(_usage(bodies[rid]) for rid in ids if "usage" in bodies[rid] for _ in range(2))
    assert sorted(_row_usage(r) for r in ok) == want
    assert all(r["priced"] or r["cost_nanos"] is None for r in ok)
    for r in ok:
        assert r["upstream_id"] and r["upstream_id"].startswith("chatcmpl-")
        assert r["finish_reason"] in ("stop", "length", "tool_calls")
    assert {r["stream"] for r in ok} == {True, False}
    (err,) = errors
    assert err["http_status"] == 429 and err["error_code"] == "request_quota_exceeded"
    if flavour is not None and flavour.http is httpx:  # httpx with brotli and zstandard asks for zstd first
        assert "zstd" in replay.sent
    elif flavour is not None:
        assert "br" in replay.sent  # httpx2 knows br, not zstd
    else:
        assert "gzip" in replay.sent  # the wrapper asks for gzip and deflate


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip", "deflate", "x-unknown", "identity, gzip"])
def test_every_encoding_httpx_decodes_is_read(
    encoding: str, ledger_env: dict[str, str], replay: Replay
) -> None:
    """A body (and a stream) in any encoding the caller's httpx decodes is read as the caller
    reads it; a value httpx ignores is ignored here too (the body is read as it is)."""
    body = json.loads(Answer.recorded("pa-01").body)
    forced = encoding if encoding != "identity, gzip" else "gzip"

    async def go() -> None:
        caller = Caller("cerebras-sync-httpx", FLAVOURS[0], replay.base_url)
        a = Answer.recorded("pa-01", encoding=forced)
        if encoding in ("x-unknown", "identity, gzip"):
            a.headers.append(("content-encoding", encoding))
            a.encoding = "identity" if encoding == "x-unknown" else "gzip"
        replay.queue(
            a,
            Answer(
                200,
                SSE + [h for h in a.headers if h[0] == "content-encoding"],
                stream_of(body),
                encoding=a.encoding,
            ),
        )
        reply = await caller.chat("gpt-oss-120b")
        assert reply.usage.prompt_tokens == body["usage"]["prompt_tokens"]
        assert await _drain(await caller.chat("gpt-oss-120b", stream=True))
        await caller.close()

    _run(go())
    _flush()
    rows = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [_row_usage(r) for r in rows] == [_usage(body)] * 2
    assert all(r["priced"] and r["cost_nanos"] > 0 for r in rows)


# -- 2. legacy text completions --------------------------------------------------------------------


@each_caller
@pytest.mark.parametrize("route", ["cerebras", "lava"])
def test_legacy_text_completions_are_recorded(
    kind: str, flavour: Flavour | None, route: str, ledger_env: dict[str, str], replay: Replay
) -> None:
    """``client.completions.create`` (``POST /v1/completions``), direct and through Lava, streamed
    and not: billed like chat, so recorded like chat, with ``endpoint='completions'``."""
    body = json.loads((WIRE / "completion.json").read_text())

    async def go() -> None:
        caller = Caller(kind, flavour, replay.base_url, lava=route == "lava")
        replay.queue(
            Answer(200, JSON_CT, json.dumps(body).encode()),
            Answer(200, SSE, stream_of(body, text=True), chunks=[5, 17, 2]),
        )
        try:
            reply = await caller.text("llama3.1-8b")
            text = reply["choices"][0]["text"] if isinstance(reply, dict) else reply.choices[0].text
            assert text == body["choices"][0]["text"]
            assert len(await _drain(await caller.text("llama3.1-8b", stream=True))) >= 2
        finally:
            await caller.close()

    _run(go())
    _flush()
    paths = [p for _, p, _ in replay.requests]
    if route == "lava":
        assert all(p.startswith("/v1/forward?u=") and "%2Fv1%2Fcompletions" in p for p in paths)
    else:
        assert paths == ["/v1/completions"] * 2
    rows = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert [r["endpoint"] for r in rows] == ["completions"] * 2
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [(10, 100)] * 2
    assert [r["stream"] for r in rows] == [False, True]
    assert [r["route"] for r in rows] == [route] * 2
    assert all(r["finish_reason"] == "length" and r["priced"] for r in rows)
    if route == "cerebras":  # llama3.1-8b: $0.10 / 1M each way in Cerebras's book
        assert [r["cost_nanos"] for r in rows] == [110 * 100] * 2
    else:  # free in Lava's book
        assert all(r["free"] for r in rows)


# -- 3. a later chunk never erases an earlier one --------------------------------------------------


def _chunks_after_usage(kind: str) -> bytes:
    body = json.loads(Answer.recorded("pa-01").body)
    stream = stream_of(body, done=False)
    base = {"id": body["id"], "model": body["model"], "object": "chat.completion.chunk"}
    if kind == "usage: null after usage":
        tail = _event({**base, "choices": [], "usage": None})
    elif kind == "time_info alone after usage":
        tail = _event({**base, "choices": [], "time_info": body["time_info"]})
    elif kind == "one finish chunk per choice (n=2)":
        tail = _event({**base, "choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]})
    else:  # usage: null on every chunk before the one that has it (OpenAI's include_usage style)
        events = stream.split(b"\n\n")[:-1]
        nulled = [_event({**json.loads(e[6:]), "usage": None}) for e in events[:-1]]
        return (
            b"".join(nulled)
            + events[-1]
            + b"\n\n"
            + _event({**base, "choices": [], "usage": None})
            + b"data: [DONE]\n\n"
        )
    return stream + tail + b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "kind",
    [
        "usage: null after usage",
        "time_info alone after usage",
        "one finish chunk per choice (n=2)",
        "usage: null on every chunk",
    ],
)
@pytest.mark.parametrize("caller", ["openai-sync-httpx2", "wrapper-sync"])
def test_a_later_chunk_never_erases_usage(
    kind: str, caller: str, ledger_env: dict[str, str], replay: Replay
) -> None:
    body = json.loads(Answer.recorded("pa-01").body)
    flavour = next((f for f in FLAVOURS if f.id == caller), None)

    async def go() -> None:
        c = Caller(caller, flavour, replay.base_url)
        for chunks in ([1, 2, 3, 5, 8], [100000]):
            replay.queue(Answer(200, SSE, _chunks_after_usage(kind), chunks=chunks))
            assert await _drain(await c.chat("gpt-oss-120b", stream=True))
        await c.close()

    _run(go())
    _flush()
    rows = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [_row_usage(r) for r in rows] == [_usage(body)] * 2
    assert all(r["priced"] and r["cost_nanos"] == 80 * 350 + 45 * 750 for r in rows)
    assert all(r["time_info"] if "time_info" in r else r["total_us"] for r in rows)
    assert all(r["finish_reason"] == "stop" for r in rows)


# -- 4. a single event of many megabytes ------------------------------------------------------------


@pytest.mark.parametrize("shape", ["stream, big first event", "stream, big middle event", "json body"])
def test_a_huge_event_is_read_in_linear_time(
    shape: str, ledger_env: dict[str, str], replay: Replay, reliability: Any
) -> None:
    """A 24 MB content event (and a 24 MB JSON body): usage still read, chunks of odd sizes.
    (Its cost against bare httpx is measured in benchmarks/, not here.)"""
    body = json.loads(Answer.recorded("pa-01").body)
    content = 'word "quoted" \\ back\\slash é ' * 800_000
    if shape == "json body":
        big = dict(body)
        big["choices"] = [{**body["choices"][0], "message": {"role": "assistant", "content": content}}]
        answer = Answer(
            200, JSON_CT, json.dumps(big).encode(), chunks=[65_536, 1, 40_000], encoding="identity"
        )
    else:
        base = {"id": body["id"], "model": body["model"], "object": "chat.completion.chunk"}
        huge = _event(
            {**base, "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
        )
        rest = stream_of(body)
        if shape == "stream, big first event":
            data = huge + rest
        else:
            head, tail = rest.split(b"\n\n", 1)
            data = head + b"\n\n" + huge + tail
        answer = Answer(200, SSE, data, chunks=[65_536, 3, 100_000], encoding="identity")
    replay.queue(answer)

    async def go() -> None:
        c = Caller("cerebras-sync-httpx", FLAVOURS[0], replay.base_url)
        if shape == "json body":
            reply = await c.chat("gpt-oss-120b")
            assert reply.choices[0].message.content == content
        else:
            chunks = await _drain(await c.chat("gpt-oss-120b", stream=True))
            deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
            text = "".join((d.get("content") if isinstance(d, dict) else d.content) or "" for d in deltas)
            assert text.startswith(content)
        await c.close()

    _run(go())
    _flush()
    rows = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    reliability(
        load="one call",
        fault=f"a 24 MB {shape.split(',')[0]} event/body at odd chunk sizes",
        inputs=shape,
        expected=1,
        recorded=sum(r["usage_known"] for r in rows),
        lost=1 - len(rows),
    )
    (row,) = rows
    assert row["status"] == "ok" and _row_usage(row) == _usage(body)
    assert row["upstream_id"] == body["id"] and row["served_model"] == body["model"]


# -- 5. what the wire says besides usage -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["cerebras-sync-httpx", "wrapper-sync"])
def test_wire_facts_are_kept(kind: str, ledger_env: dict[str, str], replay: Replay) -> None:
    """inference-id (the upstream id when the body is unreadable), the requested service_tier,
    finish_reason, prediction and image tokens, and the x-ratelimit-* headroom."""
    body = json.loads(Answer.recorded("pa-01").body)
    body["usage"]["completion_tokens_details"].update(
        accepted_prediction_tokens=7, rejected_prediction_tokens=3
    )
    body["usage"]["prompt_tokens_details"]["image_tokens"] = 11
    flavour = FLAVOURS[0] if kind != "wrapper-sync" else None

    async def go() -> None:
        c = Caller(kind, flavour, replay.base_url)
        replay.queue(
            Answer(200, JSON_CT + RATE_LIMIT + [("inference-id", body["id"])], json.dumps(body).encode()),
            Answer(200, JSON_CT + [("inference-id", "chatcmpl-unreadable")], b"{not json"),
            Answer(429, JSON_CT + [("inference-id", "chatcmpl-limited")], Answer.recorded("pa-21").body),
        )
        await c.chat("gpt-oss-120b", service_tier="flex")
        with pytest.raises(Exception):  # noqa: B017 - each client (SDK or wrapper) raises its own kind
            await c.chat("gpt-oss-120b")
        with pytest.raises(Exception):  # noqa: B017 - each client (SDK or wrapper) raises its own kind
            await c.chat("gpt-oss-120b", stream=True, service_tier="priority")
        await c.close()

    _run(go())
    _flush()
    first, unreadable, limited = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert first["service_tier"] == "flex" and first["finish_reason"] == "stop"
    assert (
        first["accepted_prediction_tokens"],
        first["rejected_prediction_tokens"],
        first["image_tokens"],
    ) == (7, 3, 11)
    assert first["rl_remaining_tokens_minute"] == 999998298
    assert first["rl_remaining_requests_day"] == 999997455
    assert unreadable["upstream_id"] == "chatcmpl-unreadable" and unreadable["service_tier"] is None
    assert limited["upstream_id"] == "chatcmpl-limited" and limited["status"] == "error"
    assert limited["stream"] and limited["service_tier"] == "priority"  # a streamed request, answered 429


def test_retry_after_ms_comes_before_retry_after() -> None:
    """Cerebras's 429 carries ``retry-after-ms`` (the real one: 660); the wrapper waits that."""

    def response(**headers: str) -> httpx.Response:
        return httpx.Response(429, headers=headers)

    assert retry_delay(0, response(**{"retry-after-ms": "660", "retry-after": "30"})) == pytest.approx(0.66)
    assert retry_delay(0, response(**{"retry-after": "2"})) == 2.0
    assert retry_delay(0, response(**{"retry-after-ms": "nan", "retry-after": "1"})) == 1.0
    assert retry_delay(0, response(**{"retry-after-ms": "-5"})) <= 0.5


def test_a_malformed_final_event_is_an_error(ledger_env: dict[str, str], replay: Replay) -> None:
    body = json.loads(Answer.recorded("pa-01").body)
    events = stream_of(body, done=False).split(b"\n\n")[:-1]
    data = b"\n\n".join(events[:-1]) + b"\n\n" + events[-1][:-20] + b"\n\n"  # the usage chunk, cut short
    replay.queue(Answer(200, SSE, data))

    async def go() -> None:
        c = Caller("wrapper-sync", None, replay.base_url)
        with pytest.raises(ledger.APIResponseValidationError):
            await _drain(await c.chat("gpt-oss-120b", stream=True))
        await c.close()

    _run(go())
    _flush()
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "error" and row["note"] == "malformed event in stream"


# -- 6. abandoned streams are durable before the process exits ------------------------------------

ABANDON = textwrap.dedent("""
    import sys, httpx, ledger
    from cerebras.cloud.sdk import Cerebras
    http = ledger.instrument(httpx.Client(), project="proj-wire")
    client = Cerebras(api_key="sk-test", base_url=sys.argv[1], http_client=http, max_retries=0,
                      warm_tcp_connection=False)
    for chunk in client.chat.completions.create(model="gpt-oss-120b", messages=[{"role": "user", "content": "hi"}],
                                                stream=True):
        break  # the caller stops reading and never closes the stream
    if sys.argv[2] == "close":
        client.close()
    # and exits: no flush, no close of the ledger; the stream object is still referenced here
    kept = chunk
""")


@pytest.mark.parametrize("how", ["close", "exit"])
def test_an_abandoned_stream_is_recorded_before_exit(
    how: str, ledger_env: dict[str, str], replay: Replay, tmp_path: Path, reliability: Any
) -> None:
    body = json.loads(Answer.recorded("pa-01").body)
    long = {
        **body,
        "choices": [{**body["choices"][0], "message": {"role": "assistant", "content": "word " * 400}}],
    }
    replay.queue(
        Answer(200, SSE, stream_of(long, pieces=40), chunks=[600], stall_after=2, encoding="identity")
    )
    script = tmp_path / "abandon.py"
    script.write_text(ABANDON)
    env = {**os.environ, **ledger_env}
    done = subprocess.run(
        [sys.executable, str(script), replay.base_url, how],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    if not rows:  # the writer may not have reached the database before exit; the spool holds it
        ledger.journal.recover(ledger_env["LEDGER_DATABASE_URL"], ledger_env["LEDGER_SPOOL_DIR"])
        rows = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    reliability(
        load="one SDK stream, then the process exits",
        inputs=how,
        fault="caller breaks out of the stream, never closes it"
        + (", closes the client" if how == "close" else ", leaves the client open"),
        expected=1,
        recorded=len(rows),
        lost=1 - len(rows),
    )
    (row,) = rows
    assert row["status"] == "incomplete" and row["upstream_id"] == body["id"]
    assert "abandoned" in row["note"]


@pytest.mark.parametrize(
    ("body", "stream", "tier"),
    [
        ({"model": "m", "stream": True, "service_tier": "priority"}, True, "priority"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": '"stream": true, "service_tier": "flex"'}],
            },
            False,
            None,
        ),  # inside a prompt, quotes are escaped: never read as the request's keys
        (
            {
                "model": "m",
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"stream": {"type": "boolean"}}},
                        },
                    }
                ],
                "stream": True,
            },
            True,
            None,
        ),
        ({"model": "m", "stream": False, "service_tier": "x" * 40}, False, None),  # no such tier: not kept
        ({"model": "m", "stream": "yes"}, False, None),
    ],
)
def test_the_request_facts_are_its_top_level_keys(
    body: dict[str, Any], stream: bool, tier: str | None
) -> None:
    from ledger.call.route import request_facts

    facts = request_facts(
        httpx.Request("POST", "http://127.0.0.1/v1/chat/completions", content=json.dumps(body).encode())
    )
    assert (facts.model, facts.stream, facts.service_tier) == ("m", stream, tier)
