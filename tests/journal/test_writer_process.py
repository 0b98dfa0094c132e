"""``LEDGER_WRITER=process``: the live segment written by a writer process, on SQLite and PostgreSQL.

Real calls to the loopback stand-in, a real writer process, real databases; the parent is
killed with SIGKILL, the writer process too, and every returned call must still be in the ledger
exactly once, with nothing left in the spool.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import ledger
from ledger import journal
from ledger.config import ConfigError
from ledger.testing import StandIn
from tests.helpers import ROOT, fetch_events
from tests.system.test_durability import _event

MSG = [{"role": "user", "content": "hi"}]


def _wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_calls_are_written_by_the_writer_process(
    ledger_env: dict[str, str], upstream: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGER_WRITER", "process")
    client = ledger.CerebrasClient("proc", api_key="k", base_url=upstream.base_url)
    j = client.transport.journal
    assert isinstance(j, journal.ProcessJournal) and j._child is not None
    child = j._child
    ids = [client.chat.completions.create(model="gpt-oss-120b", messages=MSG)["id"] for _ in range(30)]
    assert client.flush(30)
    assert j._thread.is_alive() and child.poll() is None  # the process did it, not the thread
    rows = fetch_events(ledger_env["LEDGER_DATABASE_URL"])
    assert sorted(r["upstream_id"] for r in rows) == sorted(ids)
    assert all(r["project"] == "proc" and r["status"] == "ok" and r["cost_nanos"] > 0 for r in rows)
    client.close()
    assert j.close(10)
    assert child.wait(10) == 0
    assert list(Path(ledger_env["LEDGER_SPOOL_DIR"]).glob("*" + journal.SEGMENT_SUFFIX)) == []


KILLED = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tests.system.test_durability import _event
from ledger import journal
j = journal.journal_for({url!r}, {spool!r})
ids = []
for _ in range({n}):
    e = _event("killed")
    j.append(e)
    ids.append(e.event_id)
print(j._child.pid, flush=True)
print(" ".join(ids), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_parent_killed_the_writer_process_writes_everything_and_cleans_up(
    db_url: str, tmp_path: Path, reliability: Any
) -> None:
    spool = tmp_path / "spool"
    root = str(ROOT)
    code = KILLED.format(root=root, url=db_url, spool=str(spool), n=3000)
    env = dict(os.environ, LEDGER_WRITER="process")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    child_pid, ids = proc.stdout.splitlines()
    assert _wait_gone(int(child_pid), 60), "the writer process outlived its parent's death"
    rows = fetch_events(db_url)
    assert sorted(r["event_id"] for r in rows) == sorted(ids.split())
    assert list(spool.glob("*" + journal.SEGMENT_SUFFIX)) == [], "the dead parent's segment was left behind"
    reliability(
        load="3000 events appended, LEDGER_WRITER=process",
        fault="SIGKILL of the calling process",
        expected=len(ids.split()),
        recorded=len(rows),
        lost=len(ids.split()) - len(rows),
    )


def test_writer_process_killed_the_thread_takes_over(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, reliability: Any
) -> None:
    caplog.set_level(logging.ERROR, logger="ledger.journal")
    j = journal.ProcessJournal(db_url, tmp_path / "spool")
    try:
        assert j._child is not None
        first = [_event() for _ in range(200)]
        for e in first:
            j.append(e)
        assert j.flush(30)
        j._child.send_signal(signal.SIGKILL)
        j._child.wait(10)
        second = [_event() for _ in range(200)]
        for e in second:
            j.append(e)
        assert j.flush(30)
    finally:
        assert j.close(10)
    rows = fetch_events(db_url)
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in first + second)
    assert any("writer process exited" in r.getMessage() for r in caplog.records)
    reliability(
        load="400 events, LEDGER_WRITER=process",
        fault="SIGKILL of the writer process",
        expected=len(first) + len(second),
        recorded=len(rows),
        lost=len(first) + len(second) - len(rows),
    )


def test_no_interpreter_for_the_writer_the_thread_writes(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ledger.journal")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    j = journal.ProcessJournal(db_url, tmp_path / "spool")
    try:
        assert j._child is None
        events = [_event() for _ in range(50)]
        for e in events:
            j.append(e)
        assert j.flush(30)
    finally:
        assert j.close(10)
    assert sorted(r["event_id"] for r in fetch_events(db_url)) == sorted(e.event_id for e in events)
    assert any("cannot start the writer process" in r.getMessage() for r in caplog.records)


def test_a_rotated_segment_is_followed_by_the_writer_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setattr(journal.sink, "ROTATE_BYTES", 20_000)  # a few dozen events a segment
    j = journal.ProcessJournal(url, tmp_path / "spool")
    segments = set()
    events: list[Any] = []
    try:
        for _ in range(6):
            batch = [_event() for _ in range(60)]
            for e in batch:
                j.append(e)
            events += batch
            segments.add(j.segment)
            assert j.flush(30)
            deadline = time.monotonic() + 10  # the thread rotates on its next round
            while j.segment in segments and time.monotonic() < deadline:
                j._wake.set()
                time.sleep(0.05)
    finally:
        assert j.close(10)
    assert len(segments) >= 3
    assert sorted(r["event_id"] for r in fetch_events(url)) == sorted(e.event_id for e in events)
    assert list((tmp_path / "spool").glob("*" + journal.SEGMENT_SUFFIX)) == []


def test_unknown_writer_mode_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_WRITER", "fork-bomb")
    with pytest.raises(ConfigError, match="LEDGER_WRITER must be 'thread' or 'process'"):
        journal.journal_for(f"sqlite:///{tmp_path / 'l.db'}", tmp_path / "spool")


def test_writer_process_command_line_never_holds_the_database_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'secret-name.db'}"
    j = journal.ProcessJournal(url, tmp_path / "spool")
    try:
        assert j._child is not None
        cmdline = Path(f"/proc/{j._child.pid}/cmdline").read_bytes()
        assert b"secret-name" not in cmdline
    finally:
        j.close(10)


def test_ctrl_c_reaches_the_group_but_the_writer_process_keeps_writing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    j = journal.ProcessJournal(url, tmp_path / "spool")
    try:
        assert j._child is not None
        j.append(_event())
        assert j.flush(30)  # started and migrated
        j._child.send_signal(signal.SIGINT)
        events = [_event() for _ in range(100)]
        for e in events:
            j.append(e)
        assert j.flush(30)
        assert j._child is not None and j._child.poll() is None, "SIGINT killed the writer process"
    finally:
        assert j.close(10)
    ids = {r["event_id"] for r in fetch_events(url)}
    assert {e.event_id for e in events} <= ids
