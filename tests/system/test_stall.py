"""Nothing one event carries can stall the writer, on SQLite and PostgreSQL.

Real calls through :class:`ledger.CerebrasClient` to loopback upstreams (the stand-in, and a
hostile one that answers with a 1 MB ``model`` and id), a real writer thread, a real writer
process (``LEDGER_WRITER=process``) and a real ``cerebras-ledger summary`` recovering a dead
process's segment. Each time, the oversize event is clipped (or set aside in
``rejected.jsonl``) and every later event still lands.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import ledger
from ledger import events, journal
from ledger.journal.codec import encode
from ledger.testing import StandIn
from tests.helpers import fetch_events
from tests.system.test_durability import _dead_segment, _event

MSG = [{"role": "user", "content": "hi"}]
BIG_TAGS = {f"tag{i:04d}": f"{i:04d}" + "v" * 995 for i in range(1200)}  # 1,200 tags of 999 characters
MEGA = 1_000_000


@pytest.fixture(params=["thread", "process"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LEDGER_WRITER", request.param)
    return str(request.param)


def _rejected(spool: Path) -> list[bytes]:
    path = spool / "rejected.jsonl"
    return path.read_bytes().splitlines() if path.exists() else []


class _HostileHandler(BaseHTTPRequestHandler):
    """An upstream that answers every chat completion with megabytes of model name and ids."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body: dict[str, Any]
        if self.headers.get("x-hostile") == "error":
            status, body = 400, {"message": "no", "type": "t" * MEGA, "code": "c" * MEGA, "param": "p" * MEGA}
        else:
            status, body = (
                200,
                {
                    "id": "chatcmpl-" + "i" * MEGA,
                    "model": "m" * MEGA,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "x"},
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                },
            )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-lava-request-id", "r" * 4000)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_event_with_1200_long_tags_never_stalls_the_writer(
    ledger_env: dict[str, str], upstream: StandIn, writer: str, reliability: Any
) -> None:
    url, spool = ledger_env["LEDGER_DATABASE_URL"], Path(ledger_env["LEDGER_SPOOL_DIR"])
    client = ledger.CerebrasClient("stall", api_key="k", base_url=upstream.base_url)
    big = client.chat.completions.create(model="gpt-oss-120b", messages=MSG, tags=BIG_TAGS)["id"]
    later = [
        client.chat.completions.create(model="gpt-oss-120b", messages=MSG, tags={"n": str(i)})["id"]
        for i in range(20)
    ]
    assert client.flush(20), f"the writer ({writer}) stalled behind one event"
    rows = {r["upstream_id"]: r for r in fetch_events(url)}
    assert set(rows) == {big, *later}
    tags = json.loads(rows[big]["tags"])
    assert 0 < len(tags) <= events.MAX_TAGS
    assert all(len(k) <= events.MAX_TAG_KEY and len(v) <= events.MAX_TAG_VALUE for k, v in tags.items())
    assert rows[big]["cost_nanos"] > 0 and "tags clipped" in (rows[big]["note"] or "")
    client.close()
    assert _rejected(spool) == []
    reliability(
        load=f"1 call with 1,200 tags of 999 characters, then 20 calls, writer {writer}",
        fault="one event bigger than the spool's read window",
        expected=21,
        recorded=len(rows),
        lost=21 - len(rows),
    )


def test_a_hostile_upstream_with_a_1mb_model_never_stalls_the_writer(
    ledger_env: dict[str, str], hostile: str, upstream: StandIn, writer: str
) -> None:
    url = ledger_env["LEDGER_DATABASE_URL"]
    bad = ledger.CerebrasClient("stall", api_key="k", base_url=hostile)
    bad.chat.completions.create(model="gpt-oss-120b", messages=MSG)
    with pytest.raises(ledger.call.errors.APIStatusError):
        bad.chat.completions.create(model="gpt-oss-120b", messages=MSG, extra_headers={"x-hostile": "error"})
    good = ledger.CerebrasClient("stall", api_key="k", base_url=upstream.base_url)
    later = [good.chat.completions.create(model="gpt-oss-120b", messages=MSG)["id"] for _ in range(10)]
    # a 1 MB requested model too (the caller's own body)
    with pytest.raises(ledger.call.errors.APIStatusError):
        good.chat.completions.create(
            model="q" * MEGA, messages=MSG, extra_headers={"x-standin-scenario": "not_found"}
        )
    assert good.flush(20) and bad.flush(20), f"the writer ({writer}) stalled behind one event"
    rows = fetch_events(url)
    assert len(rows) == 13
    assert {r["upstream_id"] for r in rows} >= set(later)
    for r in rows:
        for col, limit in (
            ("requested_model", 200),
            ("served_model", 200),
            ("upstream_id", 200),
            ("lava_request_id", 200),
            ("error_type", 100),
            ("error_code", 100),
        ):
            assert r[col] is None or len(r[col]) <= limit, col
    assert any(r["served_model"] == "m" * 200 for r in rows)
    good.close()
    bad.close()


def test_a_record_too_long_for_the_spool_is_set_aside_and_the_writer_goes_on(
    db_url: str, tmp_path: Path, writer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A record longer than the read window already in the live segment (another version wrote
    it, or a bug): set aside whole, loudly, and the writer (thread or process) goes on."""
    caplog.set_level(logging.ERROR, logger="ledger.journal")
    spool = tmp_path / "spool"
    j = journal.journal_for(db_url, spool)
    huge = b'[1,"' + b"x" * (journal.spool.READ_BYTES * 2) + b'"]\n'
    with j._lock:
        journal.spool.write_all(j._fd, huge)
        j._written += len(huge)
    later = [_event("after") for _ in range(50)]
    for e in later:
        j.append(e)
    assert j.flush(20), f"the writer ({writer}) stalled behind an oversize record"
    assert {r["event_id"] for r in fetch_events(db_url)} == {e.event_id for e in later}
    assert _rejected(spool) == [huge.rstrip(b"\n")]
    if writer == "thread":
        assert any("set aside" in r.getMessage() for r in caplog.records)
    assert j.close(10)


def test_an_oversize_line_is_never_spooled(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Should a clipped event still encode longer than the read window, it goes straight to
    ``rejected.jsonl`` with a loud line and never into the segment."""
    caplog.set_level(logging.ERROR, logger="ledger.journal")
    monkeypatch.setattr(journal.sink, "MAX_LINE", 400)
    spool = tmp_path / "spool"
    j = journal.journal_for(db_url, spool)
    big, small = _event("p" * 190), _event("ok")
    assert len(encode(big)) > 400 >= len(encode(small))
    j.append(big)
    j.append(small)
    assert j.flush(20)
    assert [r["event_id"] for r in fetch_events(db_url)] == [small.event_id]
    assert [json.loads(x)[1] for x in _rejected(spool)] == [big.event_id]
    assert any("too long" in r.getMessage() for r in caplog.records)
    assert j.close(10)


def test_summary_recovers_a_dead_segment_with_an_oversize_record(
    db_url: str, tmp_path: Path, reliability: Any
) -> None:
    """``cerebras-ledger summary`` (a real subprocess) recovers a dead process's segment that
    holds a record longer than the read window, an unreadable one and good ones around them."""
    spool = tmp_path / "spool"
    before, after = _event("dead"), _event("dead")
    huge = b'[1,"' + b"x" * (journal.spool.READ_BYTES + 10) + b'"]\n'
    seg = _dead_segment(spool, encode(before) + huge + b"\x00\xff not json\n" + encode(after))
    env = dict(
        os.environ,
        LEDGER_DATABASE_URL=db_url,
        LEDGER_SPOOL_DIR=str(spool),
        LEDGER_HOME=str(tmp_path / "home"),
    )
    env.pop("LEDGER_WRITER", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ledger", "summary"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    rows = fetch_events(db_url)
    assert sorted(r["event_id"] for r in rows) == sorted([before.event_id, after.event_id])
    assert not seg.exists()
    assert _rejected(spool) == [huge.rstrip(b"\n"), b"\x00\xff not json"]
    assert "set aside" in proc.stderr
    reliability(
        load="a dead segment: good, 1 MiB+ record, unreadable, good",
        fault="recovery by `summary`",
        expected=2,
        recorded=len(rows),
        lost=2 - len(rows),
    )


def test_the_worst_bounded_event_fits_one_spool_read() -> None:
    """Every field at its limit, in the characters JSON spends most bytes on (a control
    character is six), with far too many tags: still one line that fits one read."""
    worst = "\x01"
    base = _event()
    fields = {name: worst * (limit * 10) for name, limit in events.TEXT_LIMITS}
    tags = tuple(sorted((f"{i:05d}" + worst * 5000, worst * 50_000) for i in range(5000)))
    line = encode(
        events.CallEvent(
            **{
                **{f: getattr(base, f) for f in base.__dataclass_fields__},
                **fields,
                "event_id": worst * 10_000,
                "tags": tags,
            }
        )
    )
    assert line.count(b"\n") == 1 and len(line) <= journal.sink.MAX_LINE
    assert len(json.loads(line)[journal.codec.F_TAGS]) == events.MAX_TAGS


# -- the spool folder is the owner's alone ------------------------------------------------------

OTHER_UID = 65534  # nobody


def _cli(args: list[str], db_url: str, spool: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LEDGER_DATABASE_URL=db_url, LEDGER_SPOOL_DIR=str(spool), LEDGER_HOME=str(home))
    env.pop("LEDGER_WRITER", None)
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_spool_folder_others_may_write_is_made_ours_alone(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o777)
    j = journal.journal_for(db_url, spool)
    assert _mode(spool) == 0o700
    assert any("0777" in r.getMessage() and str(spool) in r.getMessage() for r in caplog.records)
    e = _event()
    j.append(e)
    assert j.flush(20) and [r["event_id"] for r in fetch_events(db_url)] == [e.event_id]
    assert j.close(10)
    spool.chmod(0o775)  # the CLI's recovery repairs it too
    proc = _cli(["summary"], db_url, spool, tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert _mode(spool) == 0o700 and "0775" in proc.stderr


def test_a_spool_folder_of_another_user_is_refused(db_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    foreign = _event("foreign")
    seg = _dead_segment(spool, encode(foreign))
    os.chown(spool, OTHER_UID, OTHER_UID)
    with pytest.raises(ledger.ConfigError) as info:
        journal.journal_for(db_url, spool)
    assert str(OTHER_UID) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ledger.ConfigError):
        ledger.CerebrasClient(
            "p", api_key="k", base_url="http://127.0.0.1:9", database_url=db_url, spool_dir=str(spool)
        )
    proc = _cli(["summary"], db_url, spool, tmp_path / "home")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, (
        proc.stderr
    )
    assert str(OTHER_UID) in proc.stderr
    assert seg.exists() and fetch_events(db_url) == []  # never ingested


@pytest.mark.parametrize("foreign", ["other-uid", "group-writable", "world-writable", "symlink"])
def test_a_segment_not_ours_alone_is_never_ingested(db_url: str, tmp_path: Path, foreign: str) -> None:
    spool = tmp_path / "spool"
    ours, theirs = _event("ours"), _event("theirs")
    _dead_segment(spool, encode(ours))
    bad = _dead_segment(spool, encode(theirs))
    if foreign == "other-uid":
        os.chown(bad, OTHER_UID, OTHER_UID)
    elif foreign == "group-writable":
        bad.chmod(0o620)
    elif foreign == "world-writable":
        bad.chmod(0o606)
    else:
        target = tmp_path / "elsewhere.seg"
        bad.rename(target)
        bad.symlink_to(target)
    proc = _cli(["summary"], db_url, spool, tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert [r["event_id"] for r in fetch_events(db_url)] == [ours.event_id]
    assert bad.is_symlink() or bad.exists()
    assert "not ingested" in proc.stderr and bad.name in proc.stderr


@pytest.mark.parametrize("foreign", ["other-uid", "world-writable", "symlink"])
def test_a_stop_file_not_ours_alone_is_never_obeyed(
    ledger_env: dict[str, str], upstream: StandIn, foreign: str, caplog: pytest.LogCaptureFixture
) -> None:
    from datetime import UTC, datetime, timedelta

    from ledger.call import stops
    from ledger.money import usd

    caplog.set_level(logging.WARNING, logger="ledger.stops")
    spool = Path(ledger_env["LEDGER_SPOOL_DIR"])
    spool.mkdir(mode=0o700)
    until = datetime.now(UTC) + timedelta(days=2)
    assert stops.publish(spool, [stops.Stop("stopped", "2026-11", until, usd("1"), usd("2"))], {})
    path = spool / stops.STOP_FILE
    own = stops.StopList(path, check_s=0)
    assert own.refused("stopped", "cerebras", "gpt-oss-120b") is not None  # ours: obeyed
    if foreign == "other-uid":
        os.chown(path, OTHER_UID, OTHER_UID)
    elif foreign == "world-writable":
        path.chmod(0o666)
    else:
        target = spool / "planted.json"
        path.rename(target)
        path.symlink_to(target)
    assert stops.StopList(path, check_s=0).refused("stopped", "cerebras", "gpt-oss-120b") is None
    client = ledger.CerebrasClient("stopped", api_key="k", base_url=upstream.base_url)
    assert client.chat.completions.create(model="gpt-oss-120b", messages=MSG)["id"]  # not refused
    assert any("stop list" in r.getMessage() for r in caplog.records)
    client.close()


# -- credentials never print ---------------------------------------------------------------------

SECRET_URLS = [
    ("postgresql+psycopg://postgres:S3cr3t-userinfo@127.0.0.1:5432/test", ["S3cr3t-userinfo"]),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/test?password=S3cr3t-query", ["S3cr3t-query"]),
    (
        "postgresql://u:S3cr3t-a@h/db?sslmode=require&sslpassword=S3cr3t-b&PassWord=S3cr3t-c",
        ["S3cr3t-a", "S3cr3t-b", "S3cr3t-c"],
    ),
    ("postgresql://u:p%40ss%3FS3cr3t@h/db", ["p%40ss%3FS3cr3t", "S3cr3t"]),
    ("postgresql://u:p@ss?S3cr3t/x@h/db", ["p@ss?S3cr3t/x", "S3cr3t"]),
    (
        "postgresql://h/db?pass%77ord=S3cr3t-enc&token=S3cr3t-tok&api_key=S3cr3t-k&secret=S3cr3t-s",
        ["S3cr3t-enc", "S3cr3t-tok", "S3cr3t-k", "S3cr3t-s"],
    ),
    (
        "postgresql://h/db?pwd=S3cr3t-pwd;passwd=S3cr3t-pw2&key=S3cr3t-key&access_token=S3cr3t-at",
        ["S3cr3t-pwd", "S3cr3t-pw2", "S3cr3t-key", "S3cr3t-at"],
    ),
    ("sqlite:///tmp/x.db?password=S3cr3t-lite", ["S3cr3t-lite"]),
]


@pytest.mark.parametrize(("url", "secrets"), SECRET_URLS)
def test_redact_url_hides_every_credential(url: str, secrets: list[str]) -> None:
    from ledger.config import redact, redact_url

    shown = redact_url(url)
    assert not [s for s in secrets if s in shown], shown
    assert "***" in shown
    assert shown.split("://")[0] == url.split("://")[0]
    # the same secrets, quoted anywhere in an error's text (a DSN echoed by a driver), go too
    text = f"connection failed: {url} (password={secrets[0]}, 'password': '{secrets[0]}')"
    assert not [s for s in secrets if s in redact(text, url)], redact(text, url)


def test_redact_url_keeps_what_helps() -> None:
    from ledger.config import redact_url

    assert (
        redact_url("postgresql://u:pw@db.example:5432/ledger?sslmode=require&password=x")
        == "postgresql://u:***@db.example:5432/ledger?sslmode=require&password=***"
    )
    assert redact_url("sqlite:////var/lib/ledger.db") == "sqlite:////var/lib/ledger.db"


def test_cli_errors_never_print_a_database_password(tmp_path: Path) -> None:
    bad = (
        "postgresql+psycopg://postgres:S3cr3t-a@127.0.0.1:5432/no_such_db_here"
        "?password=S3cr3t-b&sslpassword=S3cr3t-c"
    )
    for args in (["summary"], ["db", "upgrade"], ["events", "export"], ["alerts", "check"]):
        proc = _cli(args, bad, tmp_path / "spool", tmp_path / "home")
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "S3cr3t" not in out, out
        assert "Traceback" not in out
    bad_option = "postgresql+psycopg://postgres@127.0.0.1:5432/test?password=S3cr3t-d&sslmode=bogus"
    proc = _cli(["summary"], bad_option, tmp_path / "spool", tmp_path / "home")
    assert proc.returncode != 0 and "S3cr3t" not in proc.stdout + proc.stderr, proc.stderr


def test_cli_output_never_prints_a_database_password(db_url: str, tmp_path: Path) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite URLs carry no password")
    url = db_url.replace("postgres@", "postgres:S3cr3t-a@") + "&password=S3cr3t-b"  # trust auth: ignored
    for args in (["db", "upgrade"], ["-v", "summary"], ["demo", "--calls", "2"]):
        proc = _cli(args, url, tmp_path / "spool", tmp_path / "home")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert "S3cr3t" not in out, out


def test_writer_logs_never_print_a_database_password(
    tmp_path: Path, writer: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = "postgresql+psycopg://u:S3cr3t-a@127.0.0.1:1/db?password=S3cr3t-b&connect_timeout=2"
    j = journal.journal_for(url, tmp_path / "spool")
    j.append(_event())
    assert not j.flush(3)  # nothing listens on port 1
    j.close(2)
    out = capfd.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "cannot write" in logged + out.err
    assert "S3cr3t" not in logged + out.err + out.out


@pytest.mark.parametrize("planted", ["symlink", "fifo", "other-uid"])
def test_a_planted_rejected_file_never_blocks_the_writer(db_url: str, tmp_path: Path, planted: str) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    path = spool / "rejected.jsonl"
    if planted == "symlink":
        (tmp_path / "victim").write_text("keep me\n")
        path.symlink_to(tmp_path / "victim")
    elif planted == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("")
        os.chown(path, OTHER_UID, OTHER_UID)
    j = journal.journal_for(db_url, spool)
    bad = b"\x00 not a record\n"
    with j._lock:
        journal.spool.write_all(j._fd, bad)
        j._written += len(bad)
    good = _event()
    j.append(good)
    assert j.flush(20), "the writer stalled setting a record aside"
    assert [r["event_id"] for r in fetch_events(db_url)] == [good.event_id]
    (alt,) = spool.glob("rejected-*.jsonl")
    assert alt.read_bytes() == bad and alt.stat().st_uid == os.geteuid()
    if planted == "symlink":
        assert (tmp_path / "victim").read_text() == "keep me\n"
    assert j.close(10)


def test_events_of_wrong_types_or_absurd_values_never_stall_the_writer(
    db_url: str, tmp_path: Path, writer: str
) -> None:
    """Events built by hand (``Journal.append`` is public) with fields of the wrong type or
    values no column holds: ``append`` never raises, each one is written or set aside, and the
    writer (thread or process) goes on."""
    import dataclasses
    from datetime import UTC, datetime

    from ledger.events import TimeInfo, Usage

    spool = tmp_path / "spool"
    j = journal.journal_for(db_url, spool)
    odd: dict[str, Any] = dict(
        latency_us=10**30,
        ttft_us=-(10**25),
        http_status=2**70,
        usage=Usage(10**20, 0, 0, 0, 10**20),
        time_info=TimeInfo(10**30, None, None, None),
        project=123,
        requested_model=["x"],
        tags=(("a", 5), 7),
        note=7,
        occurred_at=datetime(1, 1, 1, tzinfo=UTC),
        book="no-such-book",
        stream=2,
        source="\x00" * 40,
        error_type="\udc80" * 150,
        served_model={"m": 1},
    )
    for name, value in odd.items():
        j.append(dataclasses.replace(_event("odd"), **{name: value}))
    good = _event("good")
    j.append(good)
    assert j.flush(20), f"the writer ({writer}) stalled behind an odd event"
    rows = fetch_events(db_url)
    assert good.event_id in {r["event_id"] for r in rows}
    assert len(rows) + len(_rejected(spool)) == len(odd) + 1  # each written or set aside, none lost
    assert j.close(10)
