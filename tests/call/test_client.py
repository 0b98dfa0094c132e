"""The wrapper clients against a real loopback upstream, recording into SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest

import ledger
from ledger.testing import Served, StandIn
from tests.helpers import fetch_events

MSG = [{"role": "user", "content": "count to three please"}]


def _client(upstream: StandIn, route: str, cls: type = ledger.CerebrasClient, **kw: object) -> object:
    if route == "lava":
        return cls(
            "proj-a",
            lava_forward_token="aks_live_test",
            lava_base_url=upstream.base_url,
            base_url="https://api.cerebras.ai",
            max_retries=0,
            **kw,
        )
    return cls("proj-a", api_key="sk-test", base_url=upstream.base_url, max_retries=0, **kw)


def _expected_cost_nanos(served: Served, input_rate: int, output_rate: int) -> int:
    s = served
    return (s.prompt_tokens * input_rate) + (s.completion_tokens * output_rate)


@pytest.mark.parametrize("route", ["cerebras", "lava"])
@pytest.mark.parametrize("stream", [False, True])
def test_sync_call_leaves_one_priced_event(
    ledger_env: dict[str, str], upstream: StandIn, route: str, stream: bool
) -> None:
    with _client(upstream, route) as client:  # type: ignore[attr-defined]
        reply = client.chat.completions.create(
            model="gpt-oss-120b", messages=MSG, stream=stream, max_tokens=30
        )
        chunks = list(reply) if stream else [reply]
        assert client.flush(10)
    assert chunks and all(isinstance(c, dict) for c in chunks)
    (served,) = upstream.served
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "ok" and row["route"] == route and bool(row["stream"]) is stream
    assert row["book"] == route  # a bare Lava key is managed mode: Lava's book
    assert row["upstream_id"] == served.upstream_id
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        served.prompt_tokens,
        served.completion_tokens,
    )
    assert row["reasoning_tokens"] == served.reasoning_tokens
    assert row["total_tokens"] == served.prompt_tokens + served.completion_tokens
    # gpt-oss-120b is $0.35 / $0.75 per 1M tokens in both books: 350 and 750 nano-dollars per token
    assert row["cost_nanos"] == _expected_cost_nanos(served, 350, 750)
    assert bool(row["priced"]) and not bool(row["free"])
    assert row["price_id"] == f"{route}/gpt-oss-120b@2024-01-01T00:00:00Z"
    assert (row["lava_request_id"] or "").startswith("req_") is (route == "lava")
    assert row["latency_us"] > 0 and (row["ttft_us"] is not None) is stream
    assert row["total_us"] == 7520  # time_info.total_time of the stand-in, in microseconds
    assert row["project"] == "proj-a" and row["source"] == "wrapper"


@pytest.mark.parametrize("route", ["cerebras", "lava"])
@pytest.mark.parametrize("stream", [False, True])
def test_async_call_leaves_one_priced_event(
    ledger_env: dict[str, str], upstream: StandIn, route: str, stream: bool
) -> None:
    async def go() -> list[dict[str, object]]:
        async with _client(upstream, route, ledger.AsyncCerebrasClient) as client:  # type: ignore[attr-defined]
            reply = await client.chat.completions.create(model="llama3.1-8b", messages=MSG, stream=stream)
            chunks = [c async for c in reply] if stream else [reply]
            assert await client.flush(10)
            return chunks

    chunks = asyncio.run(go())
    assert chunks
    (served,) = upstream.served
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "ok" and row["upstream_id"] == served.upstream_id
    if route == "lava":  # free through Lava
        assert bool(row["free"]) and row["cost_nanos"] == 0 and bool(row["priced"])
    else:  # $0.10 / $0.10 per 1M direct
        assert not bool(row["free"]) and row["cost_nanos"] == 100 * (
            served.prompt_tokens + served.completion_tokens
        )


def test_lava_with_own_provider_key_uses_cerebras_rates(
    ledger_env: dict[str, str], upstream: StandIn
) -> None:
    token = base64.b64encode(
        json.dumps({"secret_key": "aks_live_x", "provider_key": "csk-own"}).encode()
    ).decode()
    with ledger.CerebrasClient(
        "p", lava_forward_token=token, lava_base_url=upstream.base_url, max_retries=0
    ) as client:
        client.chat.completions.create(model="llama3.1-8b", messages=MSG)
        assert client.flush(10)
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["route"] == "lava" and row["book"] == "cerebras" and not bool(row["free"])
    assert row["cost_nanos"] > 0


@pytest.mark.parametrize(
    ("scenario", "exc", "status", "code"),
    [
        ("wrong_key", ledger.AuthenticationError, 401, "wrong_api_key"),
        ("not_found", ledger.NotFoundError, 404, "model_not_found"),
        ("rate_limit", ledger.RateLimitError, 429, "queue_exceeded"),
        ("token_quota", ledger.RateLimitError, 429, "token_quota_exceeded"),
        ("server_error", ledger.InternalServerError, 500, "internal_error"),
    ],
)
def test_upstream_error_is_recorded_then_raised(
    ledger_env: dict[str, str], upstream: StandIn, scenario: str, exc: type[Exception], status: int, code: str
) -> None:
    upstream.queue(scenario)
    with _client(upstream, "cerebras") as client:  # type: ignore[attr-defined]
        with pytest.raises(exc) as info:
            client.chat.completions.create(model="gpt-oss-120b", messages=MSG)
        assert client.flush(10)
    assert info.value.status_code == status  # type: ignore[attr-defined]
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "error" and row["http_status"] == status and row["error_code"] == code
    assert row["prompt_tokens"] is None and row["cost_nanos"] == 0 and bool(row["priced"])


def test_retries_leave_one_event_per_attempt(ledger_env: dict[str, str], upstream: StandIn) -> None:
    upstream.queue("rate_limit", "server_error")
    with ledger.CerebrasClient("p", api_key="k", base_url=upstream.base_url, max_retries=2) as client:
        reply = client.chat.completions.create(model="gpt-oss-120b", messages=MSG)
        assert client.flush(10)
    assert reply["usage"]["total_tokens"] > 0
    rows = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert [r["http_status"] for r in rows] == [429, 500, 200]
    assert [r["status"] for r in rows] == ["error", "error", "ok"]


@pytest.mark.parametrize("route", ["cerebras", "lava"])
def test_cut_stream_is_incomplete_with_unknown_usage(
    ledger_env: dict[str, str], upstream: StandIn, route: str
) -> None:
    upstream.queue("cut")
    got = []
    with _client(upstream, route) as client:  # type: ignore[attr-defined]
        with pytest.raises(ledger.APIConnectionError):
            for chunk in client.chat.completions.create(model="gpt-oss-120b", messages=MSG, stream=True):
                got.append(chunk)
        assert client.flush(10)
    assert got  # some chunks arrived before the cut
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "incomplete" and not bool(row["usage_known"])
    assert row["prompt_tokens"] is None and row["cost_nanos"] is None and not bool(row["priced"])
    assert row["upstream_id"].startswith("chatcmpl-")


def test_error_event_inside_stream(ledger_env: dict[str, str], upstream: StandIn) -> None:
    upstream.queue("stream_error")
    with _client(upstream, "cerebras") as client:  # type: ignore[attr-defined]
        with pytest.raises(ledger.APIError) as info:
            for _ in client.chat.completions.create(model="gpt-oss-120b", messages=MSG, stream=True):
                pass
        assert client.flush(10)
    assert "stream failed" in str(info.value)
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "error" and row["http_status"] == 500 and row["error_type"] == "server_error"


def test_stream_without_done_marker_is_ok(ledger_env: dict[str, str], upstream: StandIn) -> None:
    upstream.queue("no_done")
    with _client(upstream, "cerebras") as client:  # type: ignore[attr-defined]
        chunks = list(client.chat.completions.create(model="gpt-oss-120b", messages=MSG, stream=True))
        assert client.flush(10)
    assert chunks[-1]["usage"]["total_tokens"] > 0
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "ok" and row["total_tokens"] == chunks[-1]["usage"]["total_tokens"]


def test_abandoned_stream_is_incomplete(ledger_env: dict[str, str], upstream: StandIn) -> None:
    with _client(upstream, "cerebras") as client:  # type: ignore[attr-defined]
        stream = client.chat.completions.create(
            model="gpt-oss-120b", messages=MSG, stream=True, max_tokens=50
        )
        next(iter(stream))
        stream.close()
        assert client.flush(10)
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "incomplete" and row["total_tokens"] is None


def test_unknown_model_is_unpriced_not_free(ledger_env: dict[str, str], upstream: StandIn) -> None:
    with _client(upstream, "cerebras") as client:  # type: ignore[attr-defined]
        client.chat.completions.create(model="mystery-model-9000", messages=MSG)
        assert client.flush(10)
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "ok" and row["total_tokens"] > 0
    assert not bool(row["priced"]) and row["cost_nanos"] is None and not bool(row["free"])


def test_tags_and_project_per_call(ledger_env: dict[str, str], upstream: StandIn) -> None:
    with _client(upstream, "cerebras", tags={"env": "prod"}) as client:  # type: ignore[attr-defined]
        client.chat.completions.create(
            model="gpt-oss-120b", messages=MSG, tags={"user": "ana"}, project="other"
        )
        assert client.flush(10)
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["project"] == "other" and json.loads(row["tags"]) == {"env": "prod", "user": "ana"}


def test_project_from_environment(
    ledger_env: dict[str, str], upstream: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGER_PROJECT", "from-env")
    with ledger.CerebrasClient(api_key="k", base_url=upstream.base_url) as client:
        assert client.project == "from-env"
    monkeypatch.delenv("LEDGER_PROJECT")
    with pytest.raises(ledger.ConfigError, match="project"):
        ledger.CerebrasClient(api_key="k", base_url=upstream.base_url)


def test_non_json_success_is_recorded_and_raised(ledger_env: dict[str, str], upstream: StandIn) -> None:
    upstream.queue("malformed")
    with _client(upstream, "cerebras") as client:  # type: ignore[attr-defined]
        with pytest.raises(ledger.APIResponseValidationError):
            client.chat.completions.create(model="gpt-oss-120b", messages=MSG)
        assert client.flush(10)
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "ok" and not bool(row["usage_known"]) and not bool(row["priced"])
    assert row["note"] == "response body is not a JSON object"


def test_gzip_body_is_read(ledger_env: dict[str, str], upstream: StandIn) -> None:
    upstream.queue("gzip")
    with _client(upstream, "cerebras") as client:  # type: ignore[attr-defined]
        reply = client.chat.completions.create(model="gpt-oss-120b", messages=MSG)
        assert client.flush(10)
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["total_tokens"] == reply["usage"]["total_tokens"]


def test_connection_refused_is_recorded_and_raised(ledger_env: dict[str, str]) -> None:
    with ledger.CerebrasClient("p", api_key="k", base_url="http://127.0.0.1:9", max_retries=0) as client:
        with pytest.raises(ledger.APIConnectionError) as info:
            client.chat.completions.create(model="gpt-oss-120b", messages=MSG)
        assert client.flush(10)
    # as through httpx.Client: the transport's error carries the request it failed on
    cause = info.value.__cause__
    assert isinstance(cause, httpx.ConnectError)
    assert str(cause.request.url) == "http://127.0.0.1:9/v1/chat/completions"
    (row,) = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert row["status"] == "error" and row["http_status"] is None and row["error_type"] == "ConnectError"


def test_request_is_built_as_httpx_client_would_send_it() -> None:
    """The client sends through its transport, without httpx.Client: the request carries what
    the Client layer would have added (host, length, timeout) plus our own agent and encodings."""
    client = ledger.CerebrasClient(
        "p", api_key="sk-x", base_url="http://127.0.0.1:9", timeout=7.5, database_url="sqlite:///:memory:"
    )
    try:
        req = client._settings.build(
            "m", MSG, False, {"x-extra": "1"}, client._timeout, None, None, {"seed": 3}
        )
        assert req.method == "POST" and str(req.url) == "http://127.0.0.1:9/v1/chat/completions"
        assert req.headers["host"] == "127.0.0.1:9" and int(req.headers["content-length"]) == len(req.content)
        assert req.headers["user-agent"].startswith("cerebras-ledger/")
        assert req.headers["accept-encoding"] == "gzip, deflate" and req.headers["x-extra"] == "1"
        assert req.headers["authorization"] == "Bearer sk-x"
        assert json.loads(req.content) == {"model": "m", "messages": MSG, "seed": 3}
        assert req.extensions["timeout"] == {"connect": 7.5, "read": 7.5, "write": 7.5, "pool": 7.5}
        stream = client._settings.build("m", MSG, True, None, {"read": 1.0}, None, None, {})
        assert (
            stream.headers["accept"] == "text/event-stream" and json.loads(stream.content)["stream"] is True
        )
    finally:
        client.close()


def test_closed_client_refuses_calls(ledger_env: dict[str, str], upstream: StandIn) -> None:
    client = _client(upstream, "cerebras")
    client.close()  # type: ignore[attr-defined]
    client.close()  # type: ignore[attr-defined]  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        client.chat.completions.create(model="gpt-oss-120b", messages=MSG)  # type: ignore[attr-defined]
    assert upstream.requests == 0 and client.transport.journal.pending() == 0  # type: ignore[attr-defined]
