"""Keys, forward tokens, signing secrets, prompts and completions never reach the database, the spool,
a log, a report, an export, the terminal or an exception message."""

from __future__ import annotations

import base64
import json
import logging
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from openai.types.chat import ChatCompletionMessageParam

import ledger
from ledger import journal, store
from ledger.testing import StandIn, StandInHandler
from tests.helpers import fetch_events

API_KEY = "csk-SECRETKEY-7f3a9c1e"
FORWARD_TOKEN = "aks_live_FORWARDTOKEN-55d2b8"
PROMPT = "PROMPT-xyzzy-the-password-is-swordfish"
NEEDLES = (API_KEY, FORWARD_TOKEN, PROMPT, "swordfish", "word word")  # "word word": the stand-in's reply text


def _all_files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def _database_text(url: str) -> str:
    """Every cell of every table, as text (for PostgreSQL, whose files we cannot grep)."""
    engine = store.make_engine(url)
    try:
        with engine.connect() as conn:
            out = []
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                    out.append(" ".join(str(v) for v in row))
            return "\n".join(out)
    finally:
        engine.dispose()


def test_no_secret_or_content_is_stored(
    ledger_env: dict[str, str], upstream: StandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messages = [{"role": "user", "content": PROMPT}]
    with (
        ledger.CerebrasClient("p", api_key=API_KEY, base_url=upstream.base_url, max_retries=0) as direct,
        ledger.CerebrasClient(
            "p", lava_forward_token=FORWARD_TOKEN, lava_base_url=upstream.base_url, max_retries=0
        ) as lava,
    ):
        for client in (direct, lava):
            client.chat.completions.create(model="gpt-oss-120b", messages=messages)
            list(client.chat.completions.create(model="gpt-oss-120b", messages=messages, stream=True))
            upstream.queue("wrong_key")
            with pytest.raises(ledger.AuthenticationError) as info:
                client.chat.completions.create(model="gpt-oss-120b", messages=messages)
            assert API_KEY not in str(info.value) and FORWARD_TOKEN not in str(info.value)
            upstream.queue("cut")
            with pytest.raises(ledger.APIConnectionError):
                list(client.chat.completions.create(model="gpt-oss-120b", messages=messages, stream=True))
        assert direct.flush(10) and lava.flush(10)
        spool_files = _all_files(Path(ledger_env["LEDGER_SPOOL_DIR"]))
        spool_bytes = b"".join(p.read_bytes() for p in spool_files)
    assert len(upstream.served) == 4

    url = ledger_env["LEDGER_DATABASE_URL"]
    db_text = _database_text(url)
    assert "chatcmpl-" in db_text and b"chatcmpl-" in spool_bytes  # both really hold the events
    db_bytes = b"".join(p.read_bytes() for p in _all_files(tmp_path) if ".db" in p.name)
    logs = caplog.text
    for needle in NEEDLES:
        assert needle not in db_text, needle
        assert needle.encode() not in db_bytes, needle
        assert needle.encode() not in spool_bytes, needle
        assert needle not in logs, needle


# -- one whole run, then every byte it left behind ------------------------------------------------

COMPLETION = "COMPLETION-plugh-the-launch-code-is-0000"
WEBHOOK_SECRET = "whsec_SIGNINGSECRET-91e0c4"
PROVIDER_KEY = "csk-PROVIDERKEY-byok-3b8d"
BYOK_TOKEN = base64.b64encode(  # a Lava token carrying the caller's own provider key
    json.dumps({"secret_key": "aks_live_BYOKSECRET-77aa", "provider_key": PROVIDER_KEY}).encode()
).decode()
ALL_NEEDLES = (
    API_KEY,
    FORWARD_TOKEN,
    PROMPT,
    "swordfish",
    COMPLETION,
    "launch-code",
    WEBHOOK_SECRET,
    PROVIDER_KEY,
    "BYOKSECRET",
    BYOK_TOKEN,
)


class _ContentHandler(StandInHandler):
    """The stand-in, answering with a distinctive completion text (so a leak of it can be found)."""

    def _send_json(
        self, status: int, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> None:
        if isinstance(body, dict):
            for choice in body.get("choices") or []:
                message = choice.get("message") or {}
                if isinstance(message.get("content"), str):
                    message["content"] = message["content"].replace("word", COMPLETION)
        super()._send_json(status, body, headers, raw)

    def _chunk(self, data: bytes) -> None:
        super()._chunk(data.replace(b'"word "', f'"{COMPLETION} "'.encode()))


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exception_text(exc: BaseException) -> str:
    """str() and repr() of an exception, of what it carries, and of its whole cause chain."""
    out = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out += [
            str(e),
            repr(e),
            repr(getattr(e, "body", None)),
            repr(getattr(e, "request", None)),
            repr(e.args),
        ]
        e = e.__cause__ or e.__context__
    return "\n".join(out)


def test_no_secret_or_content_anywhere_after_a_whole_run(
    ledger_env: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    reliability: Any,
) -> None:
    """Calls on every route (successes and 401, 500, a cut stream, connection refused), then every
    later stage; then every file under the test's folder, every cell of the database, every log record
    at DEBUG, everything the commands printed and every exception raised to the caller are searched
    for the key, the forward tokens (bare and BYOK, and its provider key), the webhook signing
    secret, the prompt and the completion."""
    from ledger.call import attempt
    from ledger.cli.main import main
    from tests.budgets.test_alerts import Receiver
    from tests.system.test_hostile import _Clock, _month_before, _next_month

    caplog.set_level(logging.DEBUG)  # every logger at DEBUG: httpx, httpcore, sqlalchemy, ledger
    log_file = tmp_path / "logs" / "run.log"
    log_file.parent.mkdir()
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    day = _month_before(datetime.now(UTC))  # calls on the 15th of last month, so it can be billed
    month = day.strftime("%Y-%m")
    monkeypatch.setattr(attempt, "datetime", _Clock(day).cls)
    monkeypatch.setenv("LEDGER_REPORTS_DIR", str(tmp_path / "reports"))
    raised: list[BaseException] = []
    terminal: list[str] = []

    def expect_raise(kind: type[BaseException], call: Any) -> None:
        with pytest.raises(kind) as info:
            call()
        raised.append(info.value)

    def cli(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        terminal.extend((out, err))
        return code, out, err

    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
    dead = f"http://127.0.0.1:{_dead_port()}"
    upstream = StandIn()
    upstream._server.RequestHandlerClass = _ContentHandler
    try:
        with upstream:
            routes: dict[str, dict[str, Any]] = {
                "direct": dict(api_key=API_KEY, base_url=upstream.base_url),
                "lava": dict(lava_forward_token=FORWARD_TOKEN, lava_base_url=upstream.base_url),
                "byok": dict(lava_forward_token=BYOK_TOKEN, lava_base_url=upstream.base_url),
            }
            made = 0
            for route, kwargs in routes.items():
                with ledger.CerebrasClient("secrets", max_retries=0, **kwargs) as client:
                    reply = client.chat.completions.create(model="gpt-oss-120b", messages=messages)
                    assert COMPLETION in reply["choices"][0]["message"]["content"]  # it really was there
                    chunks = list(
                        client.chat.completions.create(model="gpt-oss-120b", messages=messages, stream=True)
                    )
                    assert any(COMPLETION in json.dumps(c) for c in chunks)
                    for scenario, kind in (
                        ("wrong_key", ledger.AuthenticationError),
                        ("server_error", ledger.InternalServerError),
                        ("cut", ledger.APIConnectionError),
                    ):
                        upstream.queue(scenario)
                        expect_raise(
                            kind,
                            lambda cut=scenario == "cut": list(
                                client.chat.completions.create(
                                    model="gpt-oss-120b", messages=messages, stream=cut
                                )
                            ),
                        )
                    made += 5
                    assert client.flush(10)
                refused = {**kwargs, ("base_url" if route == "direct" else "lava_base_url"): dead}
                with ledger.CerebrasClient("secrets", max_retries=0, **refused) as client:
                    expect_raise(
                        ledger.APIConnectionError,
                        lambda: client.chat.completions.create(model="gpt-oss-120b", messages=messages),
                    )
                    made += 1
            # the official SDK through instrument(): a call, a wrong key, an upstream 500
            http = ledger.instrument(httpx.Client(), project="secrets")
            with openai.OpenAI(
                api_key=API_KEY,
                base_url=f"{upstream.base_url}/v1",
                http_client=http,  # type: ignore[arg-type]  # openai types it as httpx2.Client; an httpx.Client works (duck-typed)
                max_retries=0,
            ) as sdk:
                sdk.chat.completions.create(model="gpt-oss-120b", messages=messages)
                for scenario, sdk_kind in (
                    ("wrong_key", openai.AuthenticationError),
                    ("server_error", openai.InternalServerError),
                ):
                    upstream.queue(scenario)
                    expect_raise(
                        sdk_kind, lambda: sdk.chat.completions.create(model="gpt-oss-120b", messages=messages)
                    )
                made += 3
                assert http._transport.journal.flush(10)  # type: ignore[attr-defined]
            # the chat command, with the key and then the token in the environment, both failing
            monkeypatch.setenv("CEREBRAS_BASE_URL", upstream.base_url)
            monkeypatch.setenv("LAVA_BASE_URL", upstream.base_url)
            for var, value, scenario in (
                ("CEREBRAS_API_KEY", API_KEY, "wrong_key"),
                ("LAVA_FORWARD_TOKEN", FORWARD_TOKEN, "not_found"),
            ):  # no retries
                monkeypatch.setenv(var, value)
                upstream.queue(scenario)
                code, out, err = cli("-v", "chat", "-m", "gpt-oss-120b", "-p", PROMPT, "--project", "secrets")
                assert code == 1 and err.startswith("error: upstream error: Error code: "), err
                made += 1
        spool = b"".join(p.read_bytes() for p in _all_files(Path(ledger_env["LEDGER_SPOOL_DIR"])))
        assert b"chatcmpl-" in spool  # the spool really held the events (it is emptied on close)
    finally:
        upstream.stop()

    # every later stage, each writing what it writes
    exports = tmp_path / "exports"
    exports.mkdir()
    since, until = f"{month}-01", _next_month(day)
    assert cli("rollup")[0] == 0
    for fmt in ("csv", "json", "html"):
        assert cli("report", "--project", "secrets", "--period", month, "--format", fmt)[0] == 0
        assert cli("report", "--period", month, "--format", fmt)[0] == 0
    assert cli("export", "billing", "--month", month, "--out", str(exports / "focus.csv"))[0] == 0
    for fmt in ("csv", "jsonl"):
        assert (
            cli(
                "events",
                "export",
                "--since",
                since,
                "--until",
                until,
                "--format",
                fmt,
                "--out",
                str(exports / f"events.{fmt}"),
            )[0]
            == 0
        )
    for fmt in ("table", "csv", "json"):
        assert cli("summary", "--format", fmt)[0] == 0
    with Receiver([500]) as rx:
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_URL", rx.url)
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_SECRET", WEBHOOK_SECRET)
        assert cli("budget", "set", "secrets", "--monthly", "0.000000001", "--thresholds", "50,100")[0] == 0
        now = day.strftime("%Y-%m-%dT18:00:00Z")
        code, out, err = cli("-v", "alerts", "check", "--now", now, "--spike-min", "1000000")
        assert code == 0 and "1 delivered, 1 failed" in out, out + err
        later = day.strftime("%Y-%m-%dT18:05:00Z")
        code, out, err = cli("-v", "alerts", "check", "--now", later, "--spike-min", "1000000")
        assert code == 0 and "1 delivered, 0 failed" in out, out + err
        assert cli("alerts", "list", "--format", "json")[0] == 0
    assert len(rx.requests) == 3 and all("x-ledger-signature" in r["headers"] for r in rx.requests)
    assert cli("verify")[0] == 0
    journal.close_all(5.0)
    logging.getLogger().removeHandler(handler)
    handler.close()

    # the run really produced something everywhere we look
    url = ledger_env["LEDGER_DATABASE_URL"]
    rows = fetch_events(url)
    assert len(rows) == made and {r["route"] for r in rows} == {"cerebras", "lava"}
    assert {r["status"] for r in rows} == {"ok", "error", "incomplete"}
    assert {r["http_status"] for r in rows} >= {200, 401, 500, None}
    files = _all_files(tmp_path)
    names = {p.relative_to(tmp_path).parts[0] for p in files}
    assert {"reports", "exports", "logs"} <= names
    assert len(raised) == 3 * 4 + 2 and log_file.stat().st_size > 0
    # the exceptions do carry the caller's own request (credentials included, as the SDK's do), so
    # finding no key in their str()/repr() below is not for want of one nearby
    carried = [
        request.headers.get("authorization", "")
        for request in (getattr(e, "request", None) for e in raised)
        if isinstance(request, httpx.Request)
    ]
    assert any(API_KEY in h for h in carried) and any(FORWARD_TOKEN in h for h in carried)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)

    haystacks: dict[str, bytes] = {str(p.relative_to(tmp_path)): p.read_bytes() for p in files}
    haystacks["spool (while the calls were made)"] = spool
    haystacks["database (every cell)"] = _database_text(url).encode("utf-8", "surrogatepass")
    records = [(r.getMessage(), repr(r.args), r.exc_text or "", r.stack_info or "") for r in caplog.records]
    haystacks["log records"] = "\n".join(" ".join(r) for r in records).encode()
    haystacks["terminal (CLI stdout and stderr)"] = "\n".join(terminal).encode()
    haystacks["exceptions raised to the caller"] = "\n".join(_exception_text(e) for e in raised).encode()
    found = [
        (needle, where)
        for where, data in haystacks.items()
        for needle in ALL_NEEDLES
        if needle.encode() in data
    ]
    assert found == []
    reliability(
        load=f"{made} calls (direct, Lava, Lava BYOK, openai SDK, `chat`), then rollup, reports, billing, "
        "events export, summary, budget, alerts with a webhook (one failed delivery), verify",
        fault="401 wrong key, upstream 500, stream cut, connection refused (direct and Lava)",
        inputs=f"{len(ALL_NEEDLES)} secrets and contents searched in {len(files)} files, the database, "
        f"{len(records)} log records, CLI output and {len(raised)} exceptions",
        expected=made,
        recorded=len(rows),
        lost=made - len(rows),
    )
