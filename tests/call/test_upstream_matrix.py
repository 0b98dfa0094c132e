"""Upstream misbehaves: every caller still sees the upstream unchanged, and every attempt is one event.

The requirement: *timeouts, connection resets (before the response and mid-stream), malformed
JSON, a 200 with no usage, usage with negative or absurd numbers, a non-UTF-8 body, a stream
that never ends (bounded by the caller's timeout) and an error inside a stream each yield one
event with the right status, and the caller sees the upstream's behaviour unchanged.*

The matrix is scenario × {JSON, stream} × caller. Each parametrized test is one *scenario
group* (one scenario, one mode) and makes one call per caller against the loopback
:class:`~ledger.testing.StandIn` (scenario chosen per request by the ``x-standin-scenario``
header), with ``max_retries=0`` so one call is one attempt. Callers:

* ``ledger-sync`` / ``ledger-async``: :class:`ledger.CerebrasClient` / ``AsyncCerebrasClient``.
  Their errors are checked against the documented behaviour (the SDK-named exceptions of
  ``ledger/errors.py``), and what they return against what the upstream sent (usage is passed
  through untouched, even when it is negative or absurd).
* ``cerebras-sync`` / ``cerebras-async``: the official ``cerebras-cloud-sdk`` client with
  ``http_client=ledger.instrument(httpx.Client())`` (``AsyncClient``).
* ``openai-sync`` / ``openai-async``: ``openai`` on ``httpx2`` clients, instrumented; a subset
  of the groups (``Case.openai``), since it shares the Stainless machinery of the Cerebras SDK.

"Unchanged" for an SDK caller is measured, not assumed: the same request goes through the same
SDK *without* instrumentation first (a "twin" call), and the instrumented call must end the same
way: the same exception type, message, ``status_code`` and body (ids and timestamps, which the
stand-in makes fresh for every response, left out), or the same returned content, and the same
chunks before a mid-stream failure.

"One event with the right status": after the journal is flushed, the rows of the ``events``
table are grouped by the ``caller`` tag each instrumented call carries. Every instrumented call
must leave exactly one row (uninstrumented twins none), with the status the README defines
(``ok``: the body arrived whole; ``error``: an HTTP error status, an in-stream error event, or
no response at all; ``incomplete``: the body was cut, timed out mid-body, or the caller stopped
reading), tokens only when the upstream reported valid ones, and a cost that is never negative:
``0`` for an error without usage, ``NULL`` (``priced=false``) when a served completion's usage is
unknown. Negative or absurd (10**15) token counts make the usage unknown (``ledger.call.wire``), so
they can never price into a negative or overflowing BIGINT; nonsense ``time_info`` is dropped.

Timeouts are inputs, never assertions, and chosen so a loaded machine cannot flip an outcome:
``slow`` answers 3 s late against a 0.1 s read timeout, ``hang`` (JSON) never answers (0.05 s),
and ``stall`` sends half its answer and then goes silent mid-body (0.5 s, so the first half still
arrives read by read on a busy machine). A ``hang`` *stream* trickles a chunk every 50 ms forever,
so no read timeout ever fires, in any of these SDKs (httpx's timeouts are per read): what bounds
it is the caller's own budget (it reads :data:`BUDGET` chunks, then closes the stream).

Databases: the full matrix runs on SQLite only (the ``sqlite_env`` fixture below): the call
path and the spool are the same for both databases, and running ~30 groups × ~5 callers twice
would double the runtime for no new coverage. :func:`test_slice_on_both_databases` runs a
representative slice (stall, reset, cut, absurd and negative usage, no usage, malformed JSON) with
one wrapper and one SDK caller through ``ledger_env``, i.e. on SQLite *and* PostgreSQL, where
the column types differ (that is where an absurd number would be refused).

The bugs this matrix found (:data:`BUGS`, all fixed) each keep a minimal regression test at the
end of the file; the ``bugs=`` mechanism of :func:`_case` marks a group ``xfail(strict=True,
raises=StillBuggy)`` while a known bug is open, so only checks attributed to it may fail.

Each group records one ``reliability`` row: calls made, events expected and recorded, lost.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import ssl
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cerebras.cloud.sdk as cerebras_sdk
import httpx
import httpx2
import openai
import pytest
from cerebras.cloud.sdk.types.chat.completion_create_params import MessageUserMessageRequest

import ledger
from ledger import journal
from ledger.events import MAX_TOKENS
from ledger.pricing import BUILTIN_PRICES
from ledger.testing import StandIn
from ledger.testing_wire import ABSURD_STATUS, ABSURD_TOKENS
from tests.helpers import fetch_events

MSG: list[MessageUserMessageRequest] = [{"role": "user", "content": "count to three please"}]
MODEL = "gpt-oss-120b"  # $0.35 / $0.75 per 1M tokens: 350 / 750 nano-dollars per token
PROJECT = "proj-upstream"
MAX_TOKENS_ASKED = 12  # the stand-in streams this many content chunks (cut / stall after half)
BUDGET = 5  # chunks a caller reads from a never-ending stream before it gives up and closes it
TIMEOUT = 10.0  # read timeout where none is being tested (generous: the machine is shared)
SLOW_SECONDS = 3.0  # how late "slow" answers: far beyond its 0.1 s caller timeout, however loaded the machine
# "stall" sends half its answer, then nothing: the caller's timeout must let that half arrive (each read within
# it) on a busy shared machine, and then fires on the silence
STALL_TIMEOUT = 0.5
BIGINT_MAX = 2**63 - 1

LEDGER_CALLERS = ("ledger-sync", "ledger-async")
SDK_CALLERS = ("cerebras-sync", "cerebras-async")
OPENAI_CALLERS = ("openai-sync", "openai-async")

USAGE_UNKNOWN_NOTE = "usage has missing, negative or absurd token counts"
NOT_JSON_NOTE = "response body is not a JSON object"
NO_USAGE_NOTE = "no usage in response"
NO_RESPONSE_NOTE = "no response from upstream"

BUGS = {
    "B1": "fixed bug: an in-stream error event's status_code is stored as http_status unchecked; one that fits "
    "no SQL integer (PostgreSQL INTEGER from 2**31, SQLite from 2**63) makes the database refuse "
    "the row, so the attempt's event is set aside in rejected.jsonl: lost from the ledger "
    "(fix: ledger/wire.py error_from accepts status_code only when 100 <= code <= 599)",
    "B2": "fixed bug: a stream whose body ends cleanly before any usage, finish_reason or [DONE] is recorded "
    "ok ('no usage in response') instead of incomplete: Attempt._read_completion sets that note on "
    "the first chunk, so _BodyTap.end()'s 'stream ended before usage arrived' branch never runs "
    "(fix in ledger/transport.py)",
    "B3": "fixed bug: CerebrasClient raises a plain APIError for an in-stream error event, not the "
    "APIStatusError subclass (InternalServerError for status_code 500) that ledger/errors.py "
    "documents and the SDK raises (fix: ledger/client.py _stream_error)",
    "B4": "fixed bug: an in-stream error event whose 'error' is not an object ({'error': '<text>'}) is an "
    "error to the SDKs (they raise APIStatusError) but not to the ledger: the transport records "
    "incomplete/ok instead of error, and CerebrasClient yields it as a chunk and raises nothing "
    "(fix: ledger/transport.py Attempt.read_event and ledger/client.py _payload)",
}


class StillBuggy(AssertionError):
    """A check attributed to a known bug (see :data:`BUGS`) failed: the bug is still there."""


ANY_VALID_STATUS = -1  # Case.http_status: any real HTTP status (100..599), or none


@dataclass(frozen=True)
class Case:
    """One scenario group: what the upstream does, and what each caller and the ledger must show."""

    scenario: str
    stream: bool
    fault: str  # for the reliability table
    status: str  # the event's status
    http_status: int | None  # None: no response at all
    raises: type[BaseException] | None  # what CerebrasClient raises (documented); None: it returns
    usage_known: bool = False
    note: str | None = None  # the event's note, where it says something specific
    error_type: str | None = None
    error_code: str | None = None
    timeout: float = TIMEOUT
    openai: bool = False  # run the openai callers too
    bugs: dict[str, str] = field(default_factory=dict)  # check kind -> bug id

    @property
    def id(self) -> str:
        return f"{self.scenario}-{'stream' if self.stream else 'json'}"

    @property
    def callers(self) -> tuple[str, ...]:
        return LEDGER_CALLERS + SDK_CALLERS + (OPENAI_CALLERS if self.openai else ())


def _case(
    scenario: str,
    stream: bool,
    fault: str,
    status: str,
    http_status: int | None,
    raises: type[BaseException] | None,
    **kw: Any,
) -> Case:
    return Case(scenario, stream, fault, status, http_status, raises, **kw)


J, S = False, True
CASES = [
    # a control: the harness itself sees a clean call as one priced ok event
    _case("ok", J, "none (control)", "ok", 200, None, usage_known=True, openai=True),
    _case("ok", S, "none (control)", "ok", 200, None, usage_known=True, openai=True),
    # timeouts
    _case(
        "slow",
        J,
        f"read timeout before the response (answer {SLOW_SECONDS:g} s late, caller timeout 0.1 s)",
        "error",
        None,
        ledger.APITimeoutError,
        error_type="ReadTimeout",
        note=NO_RESPONSE_NOTE,
        timeout=0.1,
    ),
    _case(
        "slow",
        S,
        f"read timeout before the response (answer {SLOW_SECONDS:g} s late, caller timeout 0.1 s)",
        "error",
        None,
        ledger.APITimeoutError,
        error_type="ReadTimeout",
        note=NO_RESPONSE_NOTE,
        timeout=0.1,
    ),
    _case(
        "hang",
        J,
        "upstream never answers (caller timeout 0.05 s)",
        "error",
        None,
        ledger.APITimeoutError,
        error_type="ReadTimeout",
        note=NO_RESPONSE_NOTE,
        timeout=0.05,
        openai=True,
    ),
    _case(
        "hang",
        S,
        f"never-ending stream (a chunk every 50 ms; caller stops after {BUDGET} chunks)",
        "incomplete",
        200,
        None,
        openai=True,
    ),
    _case(
        "stall",
        J,
        f"body stalls halfway (caller timeout {STALL_TIMEOUT:g} s)",
        "incomplete",
        200,
        ledger.APITimeoutError,
        timeout=STALL_TIMEOUT,
    ),
    _case(
        "stall",
        S,
        f"stream stalls halfway, never ends (caller timeout {STALL_TIMEOUT:g} s)",
        "incomplete",
        200,
        ledger.APITimeoutError,
        timeout=STALL_TIMEOUT,
    ),
    # resets
    _case(
        "reset",
        J,
        "connection reset before the response",
        "error",
        None,
        ledger.APIConnectionError,
        error_type="RemoteProtocolError",
        note=NO_RESPONSE_NOTE,
    ),
    _case(
        "reset",
        S,
        "connection reset before the response",
        "error",
        None,
        ledger.APIConnectionError,
        error_type="RemoteProtocolError",
        note=NO_RESPONSE_NOTE,
        openai=True,
    ),
    _case(
        "cut", J, "connection reset halfway through the body", "incomplete", 200, ledger.APIConnectionError
    ),
    _case("cut", S, "connection reset mid-stream", "incomplete", 200, ledger.APIConnectionError, openai=True),
    _case(
        "truncated",
        S,
        "stream ends cleanly halfway (no final chunk, no usage, no [DONE])",
        "incomplete",
        200,
        None,
        openai=True,
    ),
    # bodies that are not what they should be
    _case(
        "malformed",
        J,
        "200 with truncated JSON",
        "ok",
        200,
        ledger.APIResponseValidationError,
        note=NOT_JSON_NOTE,
        openai=True,
    ),
    _case(
        "malformed",
        S,
        "malformed JSON event mid-stream",
        "incomplete",
        200,
        ledger.APIResponseValidationError,
    ),
    _case(
        "non_utf8",
        J,
        "200 with a non-UTF-8 body",
        "ok",
        200,
        ledger.APIResponseValidationError,
        note=NOT_JSON_NOTE,
    ),
    _case(
        "non_utf8",
        S,
        "non-UTF-8 event mid-stream",
        "incomplete",
        200,
        ledger.APIResponseValidationError,
        openai=True,
    ),
    _case("no_usage", J, "200 with no usage", "ok", 200, None, note=NO_USAGE_NOTE, openai=True),
    _case(
        "no_usage",
        S,
        "stream with no usage on its final chunk",
        "ok",
        200,
        None,
        note=NO_USAGE_NOTE,
        openai=True,
    ),
    _case("negative_usage", J, "usage with prompt_tokens -5", "ok", 200, None, note=USAGE_UNKNOWN_NOTE),
    _case("negative_usage", S, "usage with prompt_tokens -5", "ok", 200, None, note=USAGE_UNKNOWN_NOTE),
    _case(
        "absurd_usage",
        J,
        "usage of 10**15 tokens each way, nonsense time_info",
        "ok",
        200,
        None,
        note=USAGE_UNKNOWN_NOTE,
        openai=True,
    ),
    _case(
        "absurd_usage",
        S,
        "usage of 10**15 tokens each way, nonsense time_info",
        "ok",
        200,
        None,
        note=USAGE_UNKNOWN_NOTE,
    ),
    # errors
    _case(
        "server_error",
        J,
        "HTTP 500",
        "error",
        500,
        ledger.InternalServerError,
        error_type="server_error",
        error_code="internal_error",
    ),
    _case(
        "server_error",
        S,
        "HTTP 500 to a stream request",
        "error",
        500,
        ledger.InternalServerError,
        error_type="server_error",
        error_code="internal_error",
    ),
    _case(
        "stream_error",
        S,
        "error event (status_code 500) mid-stream",
        "error",
        500,
        ledger.InternalServerError,
        error_type="server_error",
        error_code="internal_error",
        openai=True,
    ),
    _case(
        "absurd_status",
        S,
        "error event mid-stream with status_code 2**64",
        "error",
        ANY_VALID_STATUS,
        ledger.APIStatusError,
        error_type="server_error",
        error_code="internal_error",
    ),
    _case(
        "stream_error_text",
        S,
        'error event mid-stream as {"error": "<text>"}',
        "error",
        200,
        ledger.APIStatusError,
    ),
]


def _params(cases: list[Case]) -> list[Any]:
    out = []
    for case in cases:
        marks = []
        if case.bugs:
            ids = sorted(set(case.bugs.values()))
            marks.append(
                pytest.mark.xfail(strict=True, raises=StillBuggy, reason="; ".join(BUGS[b] for b in ids))
            )
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite ledger for the whole matrix, migrated once (a migration per test would be a
    third of the file's CPU time); each test tells its own events apart (:class:`NewRows`)."""
    return f"sqlite:///{tmp_path_factory.mktemp('matrix') / 'ledger.db'}"  # NewRows migrates it


@pytest.fixture
def sqlite_env(matrix_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """``ledger_env`` on SQLite only (the full matrix; see the module docstring): the module's
    SQLite ledger, with a spool and home of the test's own."""
    env = {
        "LEDGER_HOME": str(tmp_path / "home"),
        "LEDGER_DATABASE_URL": matrix_db,
        "LEDGER_SPOOL_DIR": str(tmp_path / "spool"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in (
        "LEDGER_PROJECT",
        "CEREBRAS_API_KEY",
        "LAVA_FORWARD_TOKEN",
        "CEREBRAS_BASE_URL",
        "LAVA_BASE_URL",
    ):
        monkeypatch.delenv(k, raising=False)
    yield env
    journal.close_all(5.0)


class NewRows:
    """The events a test added to its ledger: those not there when it was made."""

    def __init__(self, url: str) -> None:
        from ledger import store

        engine = store.make_engine(url)
        try:
            store.ensure_schema(engine)  # what the writer does first anyway; a new ledger has no table yet
        finally:
            engine.dispose()
        self.url = url
        self.before = {r["event_id"] for r in fetch_events(url)}

    def __call__(self) -> list[dict[str, Any]]:
        return [r for r in fetch_events(self.url) if r["event_id"] not in self.before]


# -- callers ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one call ended, as its caller saw it."""

    chunks: list[Any]  # stream chunks received (before any exception)
    returned: Any = None  # the non-stream result
    exc: BaseException | None = None

    def brief(self) -> str:
        """A short account for a failure message."""
        what = (
            "returned"
            if self.exc is None
            else f"raised {type(self.exc).__module__}.{type(self.exc).__name__}"
        )
        text = "" if self.exc is None else f" {str(self.exc)[:80]!r}"
        return f"[{what}{text} after {len(self.chunks)} chunks]"

    def summary(self) -> tuple[Any, ...]:
        """Everything the caller could observe, minus per-response ids and timestamps."""
        exc = self.exc
        if exc is None:
            return ("returned", _norm(self.returned), _norm(self.chunks))
        return (
            "raised",
            type(exc),
            str(exc),
            getattr(exc, "status_code", None),
            _norm(getattr(exc, "body", None)),
            _norm(self.chunks),
        )


def _norm(obj: Any) -> Any:
    """A result as plain data without the fields the stand-in makes fresh per response."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    if isinstance(obj, dict):
        return {k: _norm(v) for k, v in obj.items() if k not in ("id", "created")}
    if isinstance(obj, (list, tuple)):
        return [_norm(v) for v in obj]
    return obj


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _consume(stream: Any, got: list[Any], budget: int | None) -> None:
    """Read a stream like a caller: to its end, or ``budget`` chunks and then close it."""
    if hasattr(stream, "__aiter__"):
        async for chunk in stream:
            got.append(chunk)
            if budget is not None and len(got) >= budget:
                break
    else:
        for chunk in stream:
            got.append(chunk)
            if budget is not None and len(got) >= budget:
                break
    if budget is not None and len(got) >= budget:
        await _maybe(stream.close())


def _sdk_client(caller: str, base_url: str, http: Any, timeout: float) -> Any:
    is_async = caller.endswith("async")
    if caller.startswith("cerebras"):
        cls: Any = cerebras_sdk.AsyncCerebras if is_async else cerebras_sdk.Cerebras
        return cls(
            api_key="sk-test",
            base_url=base_url,
            http_client=http,
            max_retries=0,
            timeout=timeout,
            warm_tcp_connection=False,
        )
    cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    return cls(api_key="sk-test", base_url=f"{base_url}/v1", http_client=http, max_retries=0, timeout=timeout)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every http client handed to an SDK. The calls are plain HTTP on
    loopback; building a context per client (loading the CA bundle) cost ~80 ms of CPU each."""
    return ssl.create_default_context()


def _http_client(caller: str) -> Any:
    mod: Any = httpx2 if caller.startswith("openai") else httpx
    return mod.AsyncClient(verify=_tls()) if caller.endswith("async") else mod.Client(verify=_tls())


async def _call(
    caller: str, upstream: StandIn, case: Case, *, instrumented: bool = True
) -> tuple[Outcome, Any]:
    """One call by ``caller`` in ``case``; returns how it ended and the journal it recorded into.

    Closing a client normally waits for the journal to reach the database (its ``flush_timeout``);
    here it does not, and :func:`run_group` flushes once for all callers (the writer lingers
    0.25 s between batches, so a flush per call would cost a second per group)."""
    headers = {"x-standin-scenario": case.scenario}
    budget = BUDGET if case.scenario == "hang" and case.stream else None
    out = Outcome(chunks=[])
    kw: dict[str, Any] = {
        "model": MODEL,
        "messages": MSG,
        "stream": case.stream,
        "extra_headers": headers,
        "max_tokens": MAX_TOKENS_ASKED,
    }
    if caller in LEDGER_CALLERS:
        cls: Any = ledger.AsyncCerebrasClient if caller == "ledger-async" else ledger.CerebrasClient
        client = cls(
            PROJECT,
            api_key="sk-test",
            base_url=upstream.base_url,
            max_retries=0,
            timeout=httpx.Timeout(case.timeout),
            tags={"caller": caller},
            flush_timeout=0.0,
        )
        try:
            reply = await _maybe(client.chat.completions.create(**kw))
            if case.stream:
                await _consume(reply, out.chunks, budget)
            else:
                out.returned = reply
        except Exception as exc:  # noqa: BLE001 - the outcome is what we compare
            out.exc = exc
        finally:
            await _maybe(client.close())
        return out, client.transport.journal
    http = _http_client(caller)
    if instrumented:
        assert ledger.instrument(http, project=PROJECT, tags={"caller": caller}) is http
        http._transport.flush_timeout = 0.0  # as flush_timeout=0.0 above: run_group flushes once
    sdk = _sdk_client(caller, upstream.base_url, http, case.timeout)
    try:
        reply = await _maybe(sdk.chat.completions.create(**kw))
        if case.stream:
            await _consume(reply, out.chunks, budget)
        else:
            out.returned = reply
    except Exception as exc:  # noqa: BLE001
        out.exc = exc
    finally:
        await _maybe(sdk.close())
    return out, (http._transport.journal if instrumented else None)


# -- checks -------------------------------------------------------------------------------------


class Checks:
    """Collects failed checks; those attributed to a known bug of the case are kept apart."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.failures: list[str] = []
        self.known: list[str] = []

    def __call__(self, ok: bool, caller: str, what: str, kind: str | None = None) -> bool:
        if not ok:
            family = "ledger" if caller in LEDGER_CALLERS else "sdk"
            bug = self.case.bugs.get(f"{kind}:{family}") or self.case.bugs.get(kind or "")
            (self.known if bug else self.failures).append(f"{caller}: {what}" + (f"  [{bug}]" if bug else ""))
        return ok

    def finish(self) -> None:
        if self.failures:
            raise AssertionError("\n".join([f"{self.case.id}:"] + self.failures + self.known))
        if self.known:
            raise StillBuggy("\n".join([f"{self.case.id} (known bugs):"] + self.known))


def _check_documented(check: Checks, caller: str, case: Case, out: Outcome) -> None:
    """What CerebrasClient shows, against its documented behaviour and the upstream's answer."""
    if case.raises is None:
        check(out.exc is None, caller, f"raised {out.exc!r}, expected to return", "raise")
    else:
        exact = case.raises in (ledger.APIConnectionError, ledger.APIResponseValidationError)
        ok = type(out.exc) is case.raises if exact else isinstance(out.exc, case.raises)
        check(
            ok,
            caller,
            f"raised {type(out.exc).__name__}: {out.exc}, expected {case.raises.__name__}",
            "raise",
        )
        if ok and case.raises is ledger.InternalServerError:
            check(out.exc.status_code == 500, caller, "status_code is not 500", "raise")  # type: ignore[union-attr]
    if case.scenario in ("negative_usage", "absurd_usage", "no_usage", "ok"):
        # the caller gets the upstream's usage exactly as sent, however wrong it is
        body = out.returned if not case.stream else (out.chunks[-1] if out.chunks else {})
        want = {"negative_usage": -5, "absurd_usage": ABSURD_TOKENS}.get(case.scenario)
        usage = body.get("usage") if isinstance(body, dict) else None
        if case.scenario == "no_usage":
            check(usage is None, caller, f"usage appeared: {usage}")
        elif want is not None:
            check(
                isinstance(usage, dict) and usage.get("prompt_tokens") == want,
                caller,
                f"usage changed on its way to the caller: {usage}",
            )
    if case.stream and case.scenario in (
        "cut",
        "stall",
        "malformed",
        "non_utf8",
        "stream_error",
        "truncated",
    ):
        check(
            len(out.chunks) == MAX_TOKENS_ASKED // 2 + 2,
            caller,
            f"{len(out.chunks)} chunks arrived before the failure, expected {MAX_TOKENS_ASKED // 2 + 2}",
        )


def _check_row(check: Checks, caller: str, case: Case, rows: list[dict[str, Any]]) -> None:
    """The caller's one event: status, usage, cost."""
    if not check(len(rows) == 1, caller, f"{len(rows)} events for one attempt", "count"):
        return
    (row,) = rows
    check(
        row["status"] == case.status,
        caller,
        f"status {row['status']!r} ({row['note']}), expected {case.status!r}",
        "status",
    )
    if case.http_status == ANY_VALID_STATUS:
        check(
            row["http_status"] is None or 100 <= row["http_status"] <= 599,
            caller,
            f"http_status {row['http_status']} is not an HTTP status",
        )
    else:
        check(row["http_status"] == case.http_status, caller, f"http_status {row['http_status']}")
    if case.error_type is not None:
        check(row["error_type"] == case.error_type, caller, f"error_type {row['error_type']!r}")
    if case.error_code is not None:
        check(row["error_code"] == case.error_code, caller, f"error_code {row['error_code']!r}")
    if case.note is not None:
        check(row["note"] == case.note, caller, f"note {row['note']!r}, expected {case.note!r}")
    if row["http_status"] == 200:
        check(bool(row["stream"]) is case.stream, caller, "stream flag")
    check(row["requested_model"] == MODEL and row["project"] == PROJECT, caller, "model or project")
    check(row["source"] == ("wrapper" if caller in LEDGER_CALLERS else "transport"), caller, "source")
    tokens = [
        row[k]
        for k in ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "total_tokens")
    ]
    cost = row["cost_nanos"]
    check(cost is None or 0 <= cost <= BIGINT_MAX, caller, f"cost {cost} out of range")
    check(row["list_cost_nanos"] is None or row["list_cost_nanos"] >= 0, caller, "negative list cost")
    check(all(t is None or 0 <= t <= MAX_TOKENS for t in tokens), caller, f"tokens out of range: {tokens}")
    for k in ("queue_us", "prompt_us", "completion_us", "total_us", "latency_us", "ttft_us"):
        check(row[k] is None or 0 <= row[k] < 86_400 * 10**6, caller, f"{k} out of range: {row[k]}")
    if case.usage_known:
        check(bool(row["usage_known"]) and None not in tokens, caller, f"usage not recorded: {tokens}")
        p, c = row["prompt_tokens"] or 0, row["completion_tokens"] or 0
        check(cost == 350 * p + 750 * c and bool(row["priced"]), caller, f"cost {cost} for {p}/{c} tokens")
        return
    check(not bool(row["usage_known"]) and tokens == [None] * 5, caller, f"tokens invented: {tokens}")
    if row["status"] == "error":  # a refused request costs zero
        check(cost == 0 and bool(row["priced"]), caller, f"error cost {cost}, priced {row['priced']}")
    else:  # a served completion of unknown usage is unpriced, never a silent $0
        check(cost is None and not bool(row["priced"]), caller, f"unknown usage cost {cost}")
    if case.scenario == "absurd_usage":
        check(
            [row[k] for k in ("queue_us", "prompt_us", "completion_us", "total_us")] == [None] * 4,
            caller,
            "nonsense time_info was stored",
        )


# -- one scenario group -------------------------------------------------------------------------


def run_group(
    case: Case,
    upstream: StandIn,
    env: dict[str, str],
    reliability: Callable[..., None],
    callers: tuple[str, ...] | None = None,
    db: str = "SQLite",
) -> None:
    """Every caller makes one call in ``case`` (SDK callers also an uninstrumented twin first);
    then the ledger must hold exactly one right event per instrumented call."""
    callers = callers or case.callers
    check = Checks(case)
    upstream.slow_seconds = SLOW_SECONDS
    new_rows = NewRows(env["LEDGER_DATABASE_URL"])

    async def main() -> tuple[dict[str, tuple[Outcome, Outcome | None]], list[Any]]:
        outcomes: dict[str, tuple[Outcome, Outcome | None]] = {}
        journals: list[Any] = []
        for caller in callers:
            twin = None
            if caller not in LEDGER_CALLERS:
                twin, _ = await _call(caller, upstream, case, instrumented=False)
            out, jnl = await _call(caller, upstream, case)
            outcomes[caller] = (out, twin)
            journals.append(jnl)
        return outcomes, journals

    outcomes, journals = asyncio.run(main())
    flushed = all(j.flush(10) for j in {id(j): j for j in journals}.values())
    rows = new_rows()
    by_caller: dict[str, list[dict[str, Any]]] = {c: [] for c in callers}
    strays: list[dict[str, Any]] = []
    for row in rows:
        caller = json.loads(row["tags"]).get("caller")
        by_caller.get(caller, strays).append(row)
    expected_requests = sum(1 if c in LEDGER_CALLERS else 2 for c in callers)
    recorded = sum(len(r) for r in by_caller.values())
    statuses = Counter(r["status"] for r in rows)
    reliability(
        load=f"1 call per caller × {len(callers)} callers ({', '.join(callers)}; SDK callers also 1 uninstrumented "
        f"twin call each), max_retries=0, {db}",
        # (the fixture records an xfail as "passed": say here when a known bug is expected to fail the group)
        fault=case.fault
        + (f" [known bug {', '.join(sorted(set(case.bugs.values())))}: xfail]" if case.bugs else ""),
        inputs=f"stand-in scenario {case.scenario!r}, {'stream' if case.stream else 'JSON'}, "
        f"read timeout {case.timeout:g} s",
        expected=f"{len(callers)} events ({case.status})",
        recorded=f"{len(rows)} events ({', '.join(f'{s} ×{n}' for s, n in sorted(statuses.items()))})",
        lost=max(0, len(callers) - recorded),
    )

    check(flushed, "journal", "did not flush")
    check(not strays, "ledger", f"{len(strays)} events from no caller (an uninstrumented twin was recorded?)")
    check(
        upstream.requests == expected_requests,
        "upstream",
        f"{upstream.requests} requests, expected {expected_requests}: one attempt per call",
    )
    for caller in callers:
        out, twin = outcomes[caller]
        if twin is None:
            _check_documented(check, caller, case, out)
        else:
            check(
                out.summary() == twin.summary(),
                caller,
                f"instrumented {out.brief()} differs from uninstrumented {twin.brief()}",
                "raise",
            )
        _check_row(check, caller, case, by_caller[caller])
    check.finish()


@pytest.mark.parametrize("case", _params(CASES))
def test_upstream_misbehaves(
    case: Case, sqlite_env: dict[str, str], upstream: StandIn, reliability: Callable[..., None]
) -> None:
    run_group(case, upstream, sqlite_env, reliability)


SLICE = [
    c
    for c in CASES
    if (c.scenario, c.stream)
    in {
        ("stall", S),
        ("reset", J),
        ("cut", S),
        ("absurd_usage", S),
        ("negative_usage", J),
        ("no_usage", S),
        ("malformed", J),
    }
]


@pytest.mark.parametrize("case", _params(SLICE))
def test_slice_on_both_databases(
    case: Case, ledger_env: dict[str, str], upstream: StandIn, reliability: Callable[..., None]
) -> None:
    db = "PostgreSQL" if ledger_env["LEDGER_DATABASE_URL"].startswith("postgresql") else "SQLite"
    run_group(case, upstream, ledger_env, reliability, callers=("ledger-async", "cerebras-sync"), db=db)


def test_largest_accepted_usage_cannot_overflow_the_cost_column() -> None:
    """Usage up to wire.MAX_TOKENS is believed, anything above is unknown: even the largest believed
    usage at the dearest built-in rate fits the BIGINT nano-dollar column, many times over."""
    dearest = max(
        max(p.input.nanos, p.output.nanos, (p.cached.nanos if p.cached else 0)) for p in BUILTIN_PRICES
    )
    assert 3 * MAX_TOKENS * dearest * 1000 < BIGINT_MAX
    assert ABSURD_TOKENS > MAX_TOKENS


# -- the known bugs, one minimal failing test each ----------------------------------------------


def _one_call(
    upstream: StandIn, scenario: str
) -> tuple[BaseException | None, list[Any], list[dict[str, Any]]]:
    """One streamed CerebrasClient call: what it raised, the chunks it got, the events it left."""
    new_rows = NewRows(os.environ["LEDGER_DATABASE_URL"])
    got: list[Any] = []
    exc: BaseException | None = None
    with ledger.CerebrasClient(
        PROJECT, api_key="sk-test", base_url=upstream.base_url, max_retries=0
    ) as client:
        try:
            got.extend(
                client.chat.completions.create(
                    model=MODEL, messages=MSG, stream=True, extra_headers={"x-standin-scenario": scenario}
                )
            )
        except ledger.APIError as caught:
            exc = caught
        assert client.flush(10)
    return exc, got, new_rows()


def test_absurd_status_code_in_a_stream_error_keeps_the_event(
    ledger_env: dict[str, str], upstream: StandIn
) -> None:
    exc, _, rows = _one_call(upstream, "absurd_status")
    assert exc is not None and "stream failed" in str(exc)
    assert len(rows) == 1, "the event was refused by the database (see rejected.jsonl in the spool)"
    assert rows[0]["status"] == "error" and rows[0]["http_status"] != ABSURD_STATUS


def test_stream_ending_cleanly_before_usage_is_incomplete(
    sqlite_env: dict[str, str], upstream: StandIn
) -> None:
    exc, chunks, (row,) = _one_call(upstream, "truncated")
    assert exc is None and len(chunks) == MAX_TOKENS_ASKED // 2 + 2 and "usage" not in chunks[-1]
    assert row["status"] == "incomplete", f"recorded {row['status']!r}: {row['note']}"


def test_stream_error_event_raises_the_sdk_status_error(
    sqlite_env: dict[str, str], upstream: StandIn
) -> None:
    exc, _, (row,) = _one_call(upstream, "stream_error")
    assert row["status"] == "error"
    assert isinstance(exc, ledger.InternalServerError), f"raised {type(exc).__name__}"
    assert exc.status_code == 500


def test_text_stream_error_is_an_error_to_the_transport(
    sqlite_env: dict[str, str], upstream: StandIn
) -> None:
    new_rows = NewRows(sqlite_env["LEDGER_DATABASE_URL"])
    http = ledger.instrument(httpx.Client(), project=PROJECT)
    sdk = cerebras_sdk.Cerebras(
        api_key="sk-test",
        base_url=upstream.base_url,
        http_client=http,
        max_retries=0,
        warm_tcp_connection=False,
    )
    with pytest.raises(cerebras_sdk.APIStatusError):  # the SDK sees an error event
        list(
            sdk.chat.completions.create(
                model=MODEL,
                messages=MSG,
                stream=True,
                extra_headers={"x-standin-scenario": "stream_error_text"},
            )
        )
    sdk.close()
    assert http._transport.journal.flush(10)  # type: ignore[attr-defined]
    (row,) = new_rows()
    assert row["status"] == "error", f"recorded {row['status']!r}: {row['note']}"


def test_text_stream_error_is_raised_by_the_client(sqlite_env: dict[str, str], upstream: StandIn) -> None:
    exc, chunks, _ = _one_call(upstream, "stream_error_text")
    assert isinstance(exc, ledger.APIStatusError), (
        f"raised {exc!r}; last chunk {chunks[-1] if chunks else None}"
    )
