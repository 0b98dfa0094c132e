"""``ledger.instrument(http_client)`` under the real official SDKs, against the loopback stand-in.

Six flavours: ``cerebras.cloud.sdk.Cerebras`` / ``AsyncCerebras`` on ``httpx``, and ``openai.OpenAI`` /
``AsyncOpenAI`` on both ``httpx`` and ``httpx2`` clients. Every test body is one ``async def`` run
with :func:`asyncio.run`; for the sync SDKs :func:`_maybe` just passes the plain results through.

Lava: neither SDK can build ``{LAVA}/v1/forward?u=<target>`` by itself. The SDKs append the
endpoint path to ``base_url`` (``/v1/forward`` + ``/chat/completions`` is not the forward URL,
and a query string in ``base_url`` ends up in the middle of the path), and ``default_query``
cannot change the path. The clean way for an SDK user is an ``httpx`` *request event hook* on the
client they hand to the SDK: the SDK keeps talking to ``https://api.cerebras.ai`` and the hook
re-addresses each chat completion to the forward proxy. Hooks run before the transport, so the
recording transport sees (and records) the Lava request. That is what :func:`_lava_forwarding` does.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import cerebras.cloud.sdk as cerebras_sdk
import httpx
import httpx2
import openai
import pytest

import ledger
from ledger.testing import Served, StandIn, StandInHandler
from tests.helpers import fetch_events

MSG = [{"role": "user", "content": "count to three please"}]
CEREBRAS_API = "https://api.cerebras.ai"  # what the SDK believes it talks to on the Lava route
LAVA_TOKEN = "aks_live_test"  # a bare Lava secret key: managed mode, Lava's book
PROJECT = "proj-sdk"
ROUTES = ["cerebras", "lava"]

# nano-dollars per (input, output) token, by (model, book)
PRICES = {
    ("gpt-oss-120b", "cerebras"): (350, 750),
    ("gpt-oss-120b", "lava"): (350, 750),
    ("llama3.1-8b", "cerebras"): (100, 100),
    ("llama3.1-8b", "lava"): (0, 0),
}


# -- flavours: which SDK, sync or async, on which httpx -----------------------------------------


@dataclass(frozen=True)
class Flavour:
    sdk: str  # "cerebras" or "openai"
    http: ModuleType  # httpx or httpx2: whose client is handed to the SDK as http_client=
    is_async: bool

    @property
    def id(self) -> str:
        return f"{self.sdk}-{'async' if self.is_async else 'sync'}-{self.http.__name__}"

    @property
    def errors(self) -> ModuleType:
        """The module holding the SDK's own exception types."""
        return cerebras_sdk if self.sdk == "cerebras" else openai

    def http_client(self, hooks: list[Callable[..., Any]]) -> Any:
        cls = self.http.AsyncClient if self.is_async else self.http.Client
        return cls(event_hooks={"request": hooks})

    def sdk_client(self, base_url: str, api_key: str, http_client: Any, max_retries: int, warm: bool) -> Any:
        if self.sdk == "cerebras":  # base_url without /v1
            cls = cerebras_sdk.AsyncCerebras if self.is_async else cerebras_sdk.Cerebras
            return cls(
                api_key=api_key,
                base_url=base_url,
                http_client=http_client,
                max_retries=max_retries,
                warm_tcp_connection=warm,
            )
        ocls = openai.AsyncOpenAI if self.is_async else openai.OpenAI  # base_url with /v1
        return ocls(
            api_key=api_key, base_url=f"{base_url}/v1", http_client=http_client, max_retries=max_retries
        )


FLAVOURS = [
    Flavour("cerebras", httpx, is_async=False),
    Flavour("cerebras", httpx, is_async=True),
    Flavour("openai", httpx, is_async=False),
    Flavour("openai", httpx2, is_async=False),
    Flavour("openai", httpx, is_async=True),
    Flavour("openai", httpx2, is_async=True),
]
each_flavour = pytest.mark.parametrize("flavour", FLAVOURS, ids=lambda f: f.id)


def _lava_forwarding(lava_base: str, http: ModuleType, is_async: bool) -> Callable[..., Any]:
    """A request hook sending chat completions through Lava's ``/v1/forward?u=<target>``."""

    def rewrite(request: Any) -> None:
        if request.url.path.endswith("/chat/completions"):
            request.url = http.URL(f"{lava_base}/v1/forward", params={"u": str(request.url)})
            request.headers["host"] = request.url.netloc.decode("ascii")

    async def arewrite(request: Any) -> None:
        rewrite(request)

    return arewrite if is_async else rewrite


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _drain(stream: Any) -> list[Any]:
    if hasattr(stream, "__aiter__"):
        return [chunk async for chunk in stream]
    return list(stream)


class Session:
    """One SDK client on one (by default instrumented) http client, on the direct or the Lava route."""

    def __init__(
        self,
        flavour: Flavour,
        upstream: StandIn,
        route: str = "cerebras",
        *,
        max_retries: int = 0,
        instrumented: bool = True,
        warm: bool = False,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.flavour = flavour
        hooks = []
        if route == "lava":
            hooks.append(_lava_forwarding(upstream.base_url, flavour.http, flavour.is_async))
        self.http = flavour.http_client(hooks)
        if instrumented:
            assert ledger.instrument(self.http, project=PROJECT, tags=tags) is self.http
        self.instrumented = instrumented
        base_url, key = (CEREBRAS_API, LAVA_TOKEN) if route == "lava" else (upstream.base_url, "sk-test")
        self.sdk = flavour.sdk_client(base_url, key, self.http, max_retries, warm)

    async def create(self, model: str = "gpt-oss-120b", **kw: Any) -> Any:
        return await _maybe(self.sdk.chat.completions.create(model=model, messages=MSG, **kw))

    async def stream(self, model: str = "gpt-oss-120b", **kw: Any) -> list[Any]:
        return await _drain(await self.create(model, stream=True, **kw))

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.instrumented:
                assert self.http._transport.journal.flush(10), "journal did not flush"
        finally:
            await _maybe(self.sdk.close())


def _run(flavour: Flavour, upstream: StandIn, body: Callable[[Session], Awaitable[Any]], **kw: Any) -> Any:
    """Open a session, run ``body`` in it, flush the ledger and close the SDK client."""

    async def main() -> Any:
        async with Session(flavour, upstream, **kw) as session:
            return await body(session)

    return asyncio.run(main())


def _raised(
    flavour: Flavour, upstream: StandIn, body: Callable[[Session], Awaitable[Any]], **kw: Any
) -> BaseException:
    """What ``body`` raises in a session (it must raise)."""

    async def catching(session: Session) -> BaseException:
        with pytest.raises(BaseException) as info:
            await body(session)
        return info.value

    raised: BaseException = _run(flavour, upstream, catching, **kw)
    return raised


def _rows(env: dict[str, str]) -> list[dict[str, Any]]:
    return fetch_events(env["LEDGER_DATABASE_URL"])


def _assert_priced_ok(row: dict[str, Any], served: Served, route: str, *, stream: bool) -> None:
    """``row`` is the ``ok`` event of ``served``, with its tokens and price."""
    model = served.model
    book = route  # a bare Lava key is managed mode: Lava's book
    input_rate, output_rate = PRICES[(model, book)]
    assert row["status"] == "ok" and row["http_status"] == 200
    assert (row["route"], row["book"], bool(row["stream"])) == (route, book, stream)
    assert row["upstream_id"] == served.upstream_id and row["requested_model"] == model
    assert row["prompt_tokens"] == served.prompt_tokens
    assert row["completion_tokens"] == served.completion_tokens
    assert row["reasoning_tokens"] == served.reasoning_tokens
    assert row["total_tokens"] == served.prompt_tokens + served.completion_tokens
    assert row["cost_nanos"] == served.prompt_tokens * input_rate + served.completion_tokens * output_rate
    assert bool(row["priced"]) and bool(row["free"]) is (input_rate == output_rate == 0)
    assert bool(row["usage_known"])
    assert (row["lava_request_id"] or "").startswith("req_") is (route == "lava")
    assert row["source"] == "transport" and row["project"] == PROJECT


# -- a stand-in that also keeps what each request arrived with ----------------------------------


class _RecordingHandler(StandInHandler):
    def _note(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        owner: Any = self.server.owner
        owner.seen.append((self.command, urlsplit(self.path).path, headers))

    def do_GET(self) -> None:
        self._note()
        super().do_GET()

    def do_POST(self) -> None:
        self._note()
        super().do_POST()


class RecordingStandIn(StandIn):
    """The stand-in, plus ``seen``: (method, path, lower-cased headers) of every request it received."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._server.RequestHandlerClass = _RecordingHandler


@pytest.fixture
def seen_upstream() -> Iterator[RecordingStandIn]:
    with RecordingStandIn() as server:
        yield server


# -- one call, one priced event -------------------------------------------------------------------


@each_flavour
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_call_leaves_one_priced_event(
    ledger_env: dict[str, str], upstream: StandIn, flavour: Flavour, route: str, stream: bool
) -> None:
    async def body(s: Session) -> list[Any]:
        return await s.stream(max_tokens=30) if stream else [await s.create(max_tokens=30)]

    chunks = _run(flavour, upstream, body, route=route)
    (served,) = upstream.served
    assert served.via_lava is (route == "lava") and served.stream is stream
    if stream:  # the SDK got the whole stream, usage on its last chunk
        assert chunks[-1].usage.total_tokens == served.prompt_tokens + served.completion_tokens
    else:
        assert chunks[0].id == served.upstream_id
    (row,) = _rows(ledger_env)
    _assert_priced_ok(row, served, route, stream=stream)
    assert (row["ttft_us"] is not None) is stream


@each_flavour
@pytest.mark.parametrize("route", ROUTES)
def test_llama_is_free_through_lava_only(
    ledger_env: dict[str, str], upstream: StandIn, flavour: Flavour, route: str
) -> None:
    async def body(s: Session) -> Any:
        return await s.create("llama3.1-8b")

    _run(flavour, upstream, body, route=route)
    (served,) = upstream.served
    (row,) = _rows(ledger_env)
    _assert_priced_ok(row, served, route, stream=False)
    assert (row["cost_nanos"] == 0) is (route == "lava")


# -- the SDKs' own retries ------------------------------------------------------------------------


@each_flavour
def test_sdk_retry_leaves_one_event_per_attempt(
    ledger_env: dict[str, str], upstream: StandIn, flavour: Flavour
) -> None:
    upstream.queue("rate_limit")

    async def body(s: Session) -> Any:
        return await s.create()

    reply = _run(flavour, upstream, body, max_retries=1)
    (served,) = upstream.served
    assert reply.id == served.upstream_id and upstream.requests == 2
    failed, ok = _rows(ledger_env)
    assert (failed["status"], failed["http_status"], failed["error_code"]) == ("error", 429, "queue_exceeded")
    assert failed["cost_nanos"] == 0 and failed["prompt_tokens"] is None and failed["source"] == "transport"
    _assert_priced_ok(ok, served, "cerebras", stream=False)


@each_flavour
def test_exhausted_retries_raise_the_sdk_error_and_record_every_attempt(
    ledger_env: dict[str, str], upstream: StandIn, flavour: Flavour
) -> None:
    upstream.queue("rate_limit", "token_quota")

    async def body(s: Session) -> Any:
        return await s.create()

    exc = _raised(flavour, upstream, body, max_retries=1)
    assert type(exc) is flavour.errors.RateLimitError
    assert exc.status_code == 429  # type: ignore[attr-defined]
    # the last attempt's body reaches the SDK unchanged
    assert exc.body["code"] == "token_quota_exceeded"  # type: ignore[attr-defined]
    assert upstream.requests == 2 and not upstream.served
    rows = _rows(ledger_env)
    assert [(r["status"], r["http_status"], r["error_code"]) for r in rows] == [
        ("error", 429, "queue_exceeded"),
        ("error", 429, "token_quota_exceeded"),
    ]
    assert all(r["cost_nanos"] == 0 and r["source"] == "transport" for r in rows)


# -- broken streams: recorded, and the SDK raises what it raises without the ledger ---------------


@each_flavour
@pytest.mark.parametrize("route", ROUTES)
def test_cut_stream_is_one_incomplete_event(
    ledger_env: dict[str, str], upstream: StandIn, flavour: Flavour, route: str
) -> None:
    got: list[Any] = []

    async def body(s: Session) -> None:
        stream = await s.create(stream=True, max_tokens=20)
        if hasattr(stream, "__aiter__"):
            async for chunk in stream:
                got.append(chunk)
        else:
            for chunk in stream:
                got.append(chunk)

    upstream.queue("cut", "cut")
    plain = _raised(flavour, upstream, body, route=route, instrumented=False)
    got.clear()
    exc = _raised(flavour, upstream, body, route=route)
    assert (type(exc), str(exc)) == (type(plain), str(plain))
    assert got  # some chunks arrived before the cut
    assert not upstream.served
    (row,) = _rows(ledger_env)
    assert row["status"] == "incomplete" and row["route"] == route and bool(row["stream"])
    assert not bool(row["usage_known"]) and row["prompt_tokens"] is None and row["cost_nanos"] is None
    assert not bool(row["priced"]) and row["upstream_id"].startswith("chatcmpl-")
    assert row["source"] == "transport"


@each_flavour
def test_error_event_inside_stream_is_one_error_event(
    ledger_env: dict[str, str], upstream: StandIn, flavour: Flavour
) -> None:
    async def body(s: Session) -> Any:
        return await s.stream()

    upstream.queue("stream_error", "stream_error")
    plain = _raised(flavour, upstream, body, instrumented=False)
    exc = _raised(flavour, upstream, body)
    assert (type(exc), str(exc)) == (type(plain), str(plain))
    assert isinstance(exc, flavour.errors.APIError) and "stream failed" in str(exc)
    (row,) = _rows(ledger_env)
    assert (row["status"], row["http_status"], row["error_type"], row["error_code"]) == (
        "error",
        500,
        "server_error",
        "internal_error",
    )
    assert row["prompt_tokens"] is None and row["source"] == "transport"


# -- per-request project and tags, by header; the headers never leave the process -----------------


@each_flavour
@pytest.mark.parametrize(
    "tags_header", ["team=search, user=ana", '{"team": "search", "user": "ana"}'], ids=["pairs", "json"]
)
def test_project_and_tags_headers_are_recorded_and_stripped(
    ledger_env: dict[str, str], seen_upstream: RecordingStandIn, flavour: Flavour, tags_header: str
) -> None:
    async def body(s: Session) -> Any:
        await s.create(extra_headers={"x-ledger-project": "other", "x-ledger-tags": tags_header})
        return await s.create()  # and one with the defaults

    _run(flavour, seen_upstream, body, tags={"env": "prod"})
    posts = [headers for method, _, headers in seen_upstream.seen if method == "POST"]
    assert len(posts) == 2 and all("authorization" in h for h in posts)
    assert not [k for h in posts for k in h if k.startswith("x-ledger")]
    tagged, plain = _rows(ledger_env)
    assert tagged["project"] == "other"
    assert json.loads(tagged["tags"]) == {"env": "prod", "team": "search", "user": "ana"}
    assert plain["project"] == PROJECT and json.loads(plain["tags"]) == {"env": "prod"}


# -- requests that are not chat completions are not recorded --------------------------------------


@each_flavour
def test_non_chat_requests_record_nothing(
    ledger_env: dict[str, str], seen_upstream: RecordingStandIn, flavour: Flavour
) -> None:
    async def body(s: Session) -> None:
        with pytest.raises(flavour.errors.NotFoundError):  # the stand-in has no /v1/models
            await _maybe(s.sdk.models.list())
        feed = await _maybe(s.http.get(f"{seen_upstream.base_url}/public/v1/models"))
        assert feed.status_code == 200 and feed.json()["data"]
        await s.create()  # one chat completion, so "nothing else recorded" is not vacuous

    # the sync Cerebras client warms its connection through http_client: GET /v1/tcp_warming
    warm = flavour.sdk == "cerebras" and not flavour.is_async
    _run(flavour, seen_upstream, body, warm=warm)
    gets = [path for method, path, _ in seen_upstream.seen if method == "GET"]
    assert gets == (["/v1/tcp_warming"] if warm else []) + ["/v1/models", "/public/v1/models"]
    (row,) = _rows(ledger_env)
    (served,) = seen_upstream.served
    _assert_priced_ok(row, served, "cerebras", stream=False)
