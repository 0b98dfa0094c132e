"""Webhook delivery against hostile receivers: a total deadline per attempt, a capped read of the
answer, no redirect followed, non-http(s) URLs refused, an idempotency key, and leases on the
database's clock so two deliverers (even with skewed host clocks) send each alert once.

Every receiver is a real loopback HTTP server; every database test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import pytest
import sqlalchemy as sa

from ledger import store
from ledger.budgets import budgets, check, outbox, webhook
from ledger.config import ConfigError
from tests.budgets.test_alerts import QUIET, SECRET, alert_rows, as_utc, one_error, run, spend

HUGE = 64 * 1024 * 1024  # the most a "huge" receiver sends before giving up


class Hostile:
    """A real loopback receiver that misbehaves in one chosen way (``mode``):

    ``ok`` answers 200; ``trickle`` sends its status line and then a header one byte a second,
    for ever; ``hold`` answers 200 once ``release`` is set; ``redirect`` answers 307 to
    ``location``; ``huge`` answers 200 with a 64 MiB body; ``huge-headers`` a never-ending header.
    ``requests`` records each POST (headers lower-cased, body); ``sent`` the bytes each answer got
    out before the client hung up."""

    def __init__(self, mode: str = "ok", location: str = "", host: str = "127.0.0.1") -> None:
        self.mode = mode
        self.location = location
        self.host = host
        self.requests: list[dict[str, Any]] = []
        self.sent: list[int] = []
        self.arrived = threading.Condition()
        self.release = threading.Event()
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.arrived:
                    outer.requests.append(
                        {
                            "path": self.path,
                            "body": body,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                        }
                    )
                    outer.arrived.notify_all()
                self.close_connection = True
                sent = 0
                try:
                    sent = outer._answer(self)
                except OSError as exc:  # the client hung up
                    sent = getattr(exc, "sent", 0)
                finally:
                    outer.sent.append(sent)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _answer(self, h: BaseHTTPRequestHandler) -> int:
        out = h.wfile
        sent = 0

        def write(data: bytes) -> None:
            nonlocal sent
            try:
                out.write(data)
                out.flush()
            except OSError as exc:
                exc.sent = sent  # type: ignore[attr-defined]
                raise
            sent += len(data)

        if self.mode == "trickle":
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: ":
                write(bytes([byte]))
            while not self.stop.wait(1.0):
                write(b"a")
        elif self.mode == "trickle-body":
            write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n")
            while not self.stop.wait(1.0):
                write(b"a")
        elif self.mode == "hold":
            self.release.wait(60)
            write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        elif self.mode == "redirect":
            write(
                f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {self.location}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
        elif self.mode == "huge":
            write(f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\nConnection: close\r\n\r\n".encode())
            chunk = b"x" * 65536
            while sent < HUGE and not self.stop.is_set():
                write(chunk)
        elif self.mode == "huge-headers":
            write(b"HTTP/1.1 200 OK\r\nX-Big: ")
            chunk = b"a" * 65536
            while sent < HUGE and not self.stop.is_set():
                write(chunk)
        else:
            write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        return sent

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}/hooks/T0SECRETPATH"

    def wait_for(self, n: int, timeout: float = 60) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.requests) >= n, timeout)

    def ids(self) -> list[str]:
        return [r["headers"].get("x-ledger-alert-id", "") for r in self.requests]

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


NOW = datetime(2026, 11, 5, 12, tzinfo=UTC)


def make_alerts(engine: sa.Engine, n: int = 1) -> list[check.Alert]:
    """``n`` undelivered alerts (thresholds of one project's monthly budget), due at ``NOW``."""
    thresholds = ",".join(str(10 * (i + 1)) for i in range(n))
    budgets.set_budget(engine, "hook", monthly="1", thresholds=thresholds, now=NOW - timedelta(days=1))
    spend(engine, "hook", [(NOW - timedelta(hours=1), 10**9)])
    created, _ = check.check(engine, now=NOW, spike=QUIET, deliver_now=False)
    assert len(created) == n
    return created


def bounded(fn: Callable[[], Any], limit: float = 90) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it is still going after ``limit``."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), "still running: the attempt has no total deadline"
    return out[0]


# -- one attempt, one deadline ---------------------------------------------------------------------


def test_a_trickling_receiver_ends_the_attempt_at_its_deadline(engine: sa.Engine, reliability: Any) -> None:
    (alert,) = make_alerts(engine)
    with Hostile("trickle") as rx:
        hook = webhook.Webhook(rx.url, SECRET, timeout=2)
        result = bounded(lambda: outbox.deliver(engine, hook, now=NOW))
        assert rx.ids() == [alert.alert_id]
    assert (result.delivered, result.failed) == (0, 1)
    assert result.errors == ("deadline exceeded (2 s)",)
    row = alert_rows(engine)[0]
    assert (row["attempts"], row["delivered_at"], row["claimed_until"]) == (1, None, None)
    assert row["last_error"] == "deadline exceeded (2 s)"
    assert as_utc(row["next_attempt_at"]) == NOW + timedelta(seconds=30)  # retried later, never lost
    assert rx.requests[0]["headers"]["idempotency-key"] == alert.alert_id
    reliability(
        load="1 alert",
        fault="receiver trickles one byte a second, for ever",
        inputs="2 s deadline",
        expected="attempt ends at the deadline, retried later",
        recorded=row["last_error"],
        lost=0,
    )


def test_an_answer_whose_body_trickles_counts_once_its_status_is_in(engine: sa.Engine) -> None:
    """The receiver said 202 and then dribbles its body: the alert was taken, so it is delivered
    (not resent), and the attempt still ends at its deadline."""
    (alert,) = make_alerts(engine)
    with Hostile("trickle-body") as rx:
        result = bounded(lambda: outbox.deliver(engine, webhook.Webhook(rx.url, timeout=2), now=NOW))
        assert rx.ids() == [alert.alert_id]
    assert (result.delivered, result.failed) == (1, 0)
    row = alert_rows(engine)[0]
    assert (row["attempts"], row["last_error"], row["claimed_until"]) == (1, None, None)
    assert row["delivered_at"] is not None


def test_alerts_check_on_a_trickling_receiver_returns(db_url: str, tmp_path: Path) -> None:
    """The command itself, in a real process: it ends with the failure counted, not hung."""
    eng = store.make_engine(db_url)
    store.ensure_schema(eng)
    make_alerts(eng)
    eng.dispose()
    with Hostile("trickle") as rx:
        env = {
            **os.environ,
            "LEDGER_DATABASE_URL": db_url,
            "LEDGER_HOME": str(tmp_path / "home"),
            "LEDGER_SPOOL_DIR": str(tmp_path / "spool"),
            "LEDGER_ALERT_WEBHOOK_URL": rx.url,
            "LEDGER_ALERT_WEBHOOK_TIMEOUT": "2",
        }
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "ledger",
                "alerts",
                "check",
                "--now",
                NOW.isoformat(),
                "--spike-min",
                "1000000",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert "0 delivered, 1 failed" in proc.stdout
    assert "T0SECRETPATH" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("mode", ["huge", "huge-headers"])
def test_a_huge_answer_is_read_only_in_part(engine: sa.Engine, mode: str) -> None:
    (alert,) = make_alerts(engine)
    with Hostile(mode) as rx:
        hook = webhook.Webhook(rx.url, timeout=30)
        result = bounded(lambda: outbox.deliver(engine, hook, now=NOW))
        rx.stop.set()
        assert rx.wait_for(1)
    row = alert_rows(engine)[0]
    if mode == "huge":  # a 2xx is a delivery, however long its body: read a little, then hang up
        assert (result.delivered, row["attempts"], row["last_error"]) == (1, 1, None)
    else:  # headers without end are a protocol error, retried later
        assert result.failed == 1 and row["delivered_at"] is None
        assert row["last_error"].startswith("RemoteProtocolError")
    deadline = threading.Event()
    for _ in range(100):  # the handler notes what it got out once the client has hung up
        if rx.sent:
            break
        deadline.wait(0.1)
    assert rx.sent and rx.sent[0] < HUGE // 2  # the client hung up long before the end
    assert rx.ids() == [alert.alert_id]


def test_no_redirect_is_followed(engine: sa.Engine) -> None:
    (alert,) = make_alerts(engine)
    with Hostile("ok", host="localhost") as other, Hostile("redirect", location=other.url) as rx:
        result = bounded(lambda: outbox.deliver(engine, webhook.Webhook(rx.url, timeout=5), now=NOW))
    assert result.failed == 1 and other.requests == []
    assert rx.ids() == [alert.alert_id]
    row = alert_rows(engine)[0]
    assert row["delivered_at"] is None and row["last_error"] == "HTTP 307 (redirect not followed)"


def test_every_post_carries_the_alert_id_as_idempotency_key(engine: sa.Engine) -> None:
    created = make_alerts(engine, 3)
    with Hostile("ok") as rx:
        assert outbox.deliver(engine, webhook.Webhook(rx.url, SECRET), now=NOW).delivered == 3
    assert sorted(r["headers"]["idempotency-key"] for r in rx.requests) == sorted(a.alert_id for a in created)
    assert all(r["headers"]["idempotency-key"] == r["headers"]["x-ledger-alert-id"] for r in rx.requests)


# -- configuration ---------------------------------------------------------------------------------

BAD_URLS = [
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "gopher://example.com/",
    "http://",
    "https:///only/a/path",
    "//example.com/hook",
    "example.com/hook",
    "http:example.com",
    "http://exa mple.com/hook",
    "http://example.com/ho\x00ok",
    "http://example.com/\nX-Injected: 1",
    "http://[::1/hook",
    "http://example.com:99999/",
    "http://example.com:-1/",
    "not a url",
    "https://user:p@ss@/x",
    "ws://example.com/socket",
    "data:text/plain,hi",
    "http://example.com/\u2028x",
    "http://exa\u200bmple.com/hook",
    "http://example.com\ud800/",
    "\x1b[31mhttp://example.com/",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_webhook_url_is_refused_at_configuration(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        webhook.webhook_from_env({"LEDGER_ALERT_WEBHOOK_URL": url, "LEDGER_ALERT_WEBHOOK_SECRET": SECRET})
    text = str(info.value)
    assert "\n" not in text and "LEDGER_ALERT_WEBHOOK_URL" in text
    assert SECRET not in text and "example.com/hook" not in text


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", "100000", ""])
def test_a_bad_webhook_timeout_is_refused(value: str) -> None:
    env = {"LEDGER_ALERT_WEBHOOK_URL": "https://hooks.example.com/x", "LEDGER_ALERT_WEBHOOK_TIMEOUT": value}
    if value == "":
        assert webhook.webhook_from_env(env) == webhook.Webhook("https://hooks.example.com/x")
        return
    with pytest.raises(ConfigError, match="LEDGER_ALERT_WEBHOOK_TIMEOUT"):
        webhook.webhook_from_env(env)


def test_good_webhook_urls_are_kept() -> None:
    for url in (
        "https://hooks.slack.com/services/T0/B0/x",
        "HTTP://Example.COM:8080/a?b=c",
        "http://user:pw@127.0.0.1:9/x",
        "https://[::1]:8443/hook",
        "https://bücher.example/hook",
    ):
        assert webhook.Webhook(url).url == url


@pytest.mark.parametrize("command", [("alerts", "check"), ("scheduler", "--list")])
def test_a_bad_webhook_url_stops_the_command_with_one_line(
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: tuple[str, ...],
) -> None:
    monkeypatch.setenv("LEDGER_SPOOL_DIR", str(tmp_path / "spool"))
    for bad in ("file:///etc/passwd", "javascript:alert(1)", "http://exa mple.com/T0SECRETPATH"):
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_URL", bad)
        code, _, err = run(capsys, db_url, *command)
        line = one_error(code, err, 1)
        assert "LEDGER_ALERT_WEBHOOK_URL" in line and "T0SECRETPATH" not in line and "passwd" not in line


# -- two deliverers, one slow receiver -------------------------------------------------------------


def _deliver_in_thread(
    db_url: str, hook: webhook.Webhook, errors: list[BaseException], **kwargs: Any
) -> threading.Thread:
    def go() -> None:
        eng = store.make_engine(db_url)
        try:
            outbox.deliver(eng, hook, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            eng.dispose()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_a_deliverer_whose_clock_runs_ahead_does_not_resend_a_slow_delivery(
    engine: sa.Engine, db_url: str, reliability: Any
) -> None:
    """A holds its POST open at a slow receiver; B, on a host whose clock is 10 minutes ahead
    (past any host-clock lease A could have taken), delivers at the same time: the leases are
    on the database's clock, so B leaves A's alert alone. The receiver sees each alert once."""
    created = make_alerts(engine, 3)
    errors: list[BaseException] = []
    with Hostile("hold") as rx:
        hook = webhook.Webhook(rx.url, SECRET, timeout=30)
        a = _deliver_in_thread(db_url, hook, errors)  # the real clock
        assert rx.wait_for(1)
        b = _deliver_in_thread(db_url, hook, errors, now=datetime.now(UTC) + timedelta(minutes=10))
        assert rx.wait_for(2)
        rx.release.set()
        a.join(60)
        b.join(60)
        assert not a.is_alive() and not b.is_alive()
    assert not errors
    ids = rx.ids()
    assert sorted(ids) == sorted(x.alert_id for x in created), ids
    rows = alert_rows(engine)
    assert all(r["delivered_at"] is not None and r["attempts"] == 1 for r in rows)
    reliability(
        load="2 deliverers, 3 alerts",
        fault="slow receiver; one host clock 10 min ahead",
        expected=3,
        recorded=len(set(ids)),
        lost=3 - len(set(ids)),
    )


def test_two_alerts_check_processes_at_once_send_each_alert_once(
    engine: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    """Two real ``alerts check`` processes against one outbox and a receiver that takes its
    time over every answer: each alert reaches it exactly once."""
    created = make_alerts(engine, 4)
    with Hostile("hold") as rx:
        env = {
            **os.environ,
            "LEDGER_DATABASE_URL": db_url,
            "LEDGER_HOME": str(tmp_path / "home"),
            "LEDGER_SPOOL_DIR": str(tmp_path / "spool"),
            "LEDGER_ALERT_WEBHOOK_URL": rx.url,
            "LEDGER_ALERT_WEBHOOK_TIMEOUT": "60",
        }
        args = [
            sys.executable,
            "-m",
            "ledger",
            "alerts",
            "check",
            "--now",
            NOW.isoformat(),
            "--spike-min",
            "1000000",
        ]
        procs = [
            subprocess.Popen(args, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        try:
            assert rx.wait_for(2, 90)  # both processes have an alert in flight at the slow receiver
            rx.release.set()
            outs = [p.communicate(timeout=120) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate()
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(rx.ids()) == sorted(a.alert_id for a in created)
    assert all(r["delivered_at"] is not None and r["attempts"] == 1 for r in alert_rows(engine))


def test_the_lease_outlasts_the_attempts_deadline(engine: sa.Engine, db_url: str) -> None:
    """A lease asked for shorter than the send can last is held for the whole deadline anyway:
    a second deliverer that comes after the short lease would have run out sends nothing twice."""
    (alert,) = make_alerts(engine)
    errors: list[BaseException] = []
    with Hostile("hold") as rx:
        hook = webhook.Webhook(rx.url, timeout=30)
        a = _deliver_in_thread(db_url, hook, errors, lease=timedelta(seconds=1))
        assert rx.wait_for(1)
        threading.Event().wait(2)  # the short lease is over by any clock
        result = bounded(lambda: outbox.deliver(engine, hook))
        assert result == outbox.DeliveryResult()
        rx.release.set()
        a.join(60)
    assert not errors and rx.ids() == [alert.alert_id]
    assert alert_rows(engine)[0]["delivered_at"] is not None


def test_the_claim_is_held_on_the_database_clock(engine: sa.Engine) -> None:
    """The lease in ``claimed_until`` is the database's time plus at least the deadline and a
    margin, whatever ``now`` the caller passes for due-ness."""
    (alert,) = make_alerts(engine)
    hook = webhook.Webhook("http://127.0.0.1:9/x", timeout=7)
    row = outbox.claim(engine, NOW, hook.lease)
    assert row.alert_id == alert.alert_id
    with engine.connect() as conn:
        db_now = store.db_now(conn)
    until = as_utc(alert_rows(engine)[0]["claimed_until"])
    assert until - db_now > timedelta(seconds=7)  # on the database's clock, not NOW's (a month ago)
    assert hook.lease >= timedelta(seconds=7) + webhook.LEASE_MARGIN
    assert outbox.claim(engine, NOW + timedelta(days=30), hook.lease) is None  # still held
