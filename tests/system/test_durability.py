"""Durability of the journal on SQLite and PostgreSQL: kill -9, torn records, replays, outages.

Every test here asserts on correctness only (what is in the database, what is left in the
spool), never on how fast anything happened; waits are bounded so nothing hangs.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

import ledger
from ledger import journal
from ledger.events import CallEvent, TimeInfo, Usage
from ledger.journal.codec import encode
from ledger.testing import StandIn
from tests.helpers import PG_URL, fetch_events, make_event, pg_problem, pg_schema_url

CALLER = Path(__file__).with_name("_caller.py")
MSG = [{"role": "user", "content": "count to three please"}]
ROUNDS = 3


# -- helpers -----------------------------------------------------------------------------------


def _event(project: str = "durability") -> CallEvent:
    return make_event(
        project=project,
        served_model="gpt-oss-120b",
        usage=Usage(20, 0, 8, 2, 28),
        latency_us=1234,
        time_info=TimeInfo(1, 2, 3, 4),
        upstream_id=f"chatcmpl-{uuid.uuid4()}",
        tags=(("k", "v"),),
    )


def _dead_segment(folder: Path, data: bytes, checkpoint: int | None = None) -> Path:
    """A segment as a dead process leaves it: no lock holder, optionally a checkpoint file."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    seg = folder / f"999999-{time.time_ns():x}{journal.SEGMENT_SUFFIX}"
    fd = os.open(seg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    if checkpoint is not None:
        seg.with_suffix(".ckpt").write_text(f"{checkpoint:020d}\n")
    return seg


def _spool_files(folder: Path, suffix: str) -> list[Path]:
    return sorted(folder.glob("*" + suffix)) if folder.is_dir() else []


def _assert_exactly_once(url: str, expected_ids: set[str]) -> list[dict[str, Any]]:
    rows = fetch_events(url)
    ids = Counter(r["event_id"] for r in rows)
    assert not [i for i, n in ids.items() if n > 1], "duplicated event_id"
    assert set(ids) == expected_ids, (
        f"missing {len(expected_ids - set(ids))}, unexpected {len(set(ids) - expected_ids)}"
    )
    return rows


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- 1. kill -9 ----------------------------------------------------------------------------------


def _kill_round(upstream: StandIn, mode: str, workers: int, rng: random.Random, log: Path) -> list[str]:
    """Start a caller child, SIGKILL it at a random moment after some calls returned; the ids it printed."""
    printed: list[str] = []
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, str(CALLER), upstream.base_url, mode, str(workers), "60"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=dict(os.environ),
        )
    try:

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                if raw.endswith(b"\n"):  # a line cut by the kill is not a printed id
                    printed.append(raw.decode().strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        want = rng.randint(3, 30)
        deadline = time.monotonic() + 60
        while len(printed) < want:
            assert proc.poll() is None, f"caller exited early ({proc.returncode}); see {log}"
            assert time.monotonic() < deadline, f"caller made only {len(printed)} calls; see {log}"
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.2))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL  # killed, not a clean exit that flushed
        reader.join(timeout=30)
        assert not reader.is_alive()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return list(printed)


@pytest.mark.parametrize(("mode", "workers"), [("threads", 4), ("async", 8)])
def test_kill9_loses_no_returned_call(
    ledger_env: dict[str, str], upstream: StandIn, tmp_path: Path, mode: str, workers: int, reliability: Any
) -> None:
    url, spool = ledger_env["LEDGER_DATABASE_URL"], Path(ledger_env["LEDGER_SPOOL_DIR"])
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)
    printed: list[str] = []
    for _ in range(ROUNDS):  # each round a new child; it also recovers the previous one's segment
        printed += _kill_round(upstream, mode, workers, rng, tmp_path / "caller.log")
    assert len(printed) >= ROUNDS * 3 and len(set(printed)) == len(printed), f"seed {seed}"
    assert _spool_files(spool, journal.SEGMENT_SUFFIX), "the last child's segment should wait in the spool"

    # Open the ledger again: recovery of the dead children's segments.
    if mode == "threads":
        assert journal.recover(url) == 0  # no segment has a live owner
    else:  # any CLI command recovers first
        out = subprocess.run(
            [sys.executable, "-m", "ledger", "summary", "--format", "json"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ),
        )
        assert out.returncode == 0, out.stderr
    assert _spool_files(spool, journal.SEGMENT_SUFFIX) == []

    rows = fetch_events(url)
    event_ids = Counter(r["event_id"] for r in rows)
    assert max(event_ids.values()) == 1, f"duplicated event_id (seed {seed})"
    in_db = Counter(r["upstream_id"] for r in rows)
    # Every call that returned (its id was printed) is in the ledger exactly once.
    assert [c for c in printed if in_db[c] != 1] == [], f"seed {seed}"
    assert all(r["status"] == "ok" and r["project"] == "kill9" for r in rows)
    # The stand-in records a completion right after sending it; the child may print first.
    bounded = time.monotonic() + 10
    while not set(printed) <= {s.upstream_id for s in upstream.served} and time.monotonic() < bounded:
        time.sleep(0.05)
    served = {s.upstream_id for s in upstream.served}
    assert set(printed) <= served
    # No phantom events: each one is a completion the upstream really served.
    assert set(in_db) <= served
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == len(served & set(in_db))
    # Served but not recorded: only calls in flight at the kill, whose body arrived but which had
    # not returned (nor appended their event) yet; at most one per worker per kill. A call that
    # returned is never among them (checked above).
    assert len(served - set(in_db)) <= ROUNDS * workers, f"seed {seed}"
    if mode == "async":
        (summary,) = json.loads(out.stdout)
        assert summary["project"] == "kill9" and summary["calls"] == len(rows)
    returned_recorded = sum(1 for c in printed if in_db[c] == 1)
    reliability(
        load=f"{ROUNDS} child processes in turn, {workers} {mode} each, calls back to back",
        fault=f"kill -9 at a random moment ({ROUNDS} times, seed {seed}); recovery on restart",
        expected=f"{len(printed)} returned calls",
        recorded=returned_recorded,
        lost=f"{len(printed) - returned_recorded} (plus {len(served - set(in_db))} in flight at a kill, "
        f"never returned to the caller)",
    )


# -- 2. a torn last record -------------------------------------------------------------------------


def test_torn_last_record_is_set_aside(db_url: str, tmp_path: Path, reliability: Any) -> None:
    spool = tmp_path / "spool"
    events = [_event() for _ in range(5)]
    whole = encode(_event())
    torn = whole[: len(whole) // 2]
    seg = _dead_segment(spool, b"".join(encode(e) for e in events) + torn)

    assert journal.recover(db_url, spool) == 0
    rows = _assert_exactly_once(db_url, {e.event_id for e in events})
    assert {r["upstream_id"] for r in rows} == {e.upstream_id for e in events}
    assert all(r["total_tokens"] == 28 and r["cost_nanos"] == 20 * 350 + 8 * 750 for r in rows)
    assert (spool / "rejected.jsonl").read_bytes() == torn + b"\n"
    assert not seg.exists() and not seg.with_suffix(".ckpt").exists()
    assert journal.recover(db_url, spool) == 0  # again: nothing more, nothing twice
    again = _assert_exactly_once(db_url, {e.event_id for e in events})
    assert (spool / "rejected.jsonl").read_bytes() == torn + b"\n"
    reliability(
        load="a dead process's segment: 5 whole records + half of a 6th",
        fault="torn last record",
        inputs="torn JSON line",
        expected="5 events + 1 torn line set aside",
        recorded=f"{len(again)} events, torn line in rejected.jsonl",
        lost=5 - len(again),
    )


# -- 3. crash between the database commit and the checkpoint ----------------------------------------


def test_replay_after_crash_between_commit_and_checkpoint(
    db_url: str, tmp_path: Path, reliability: Any
) -> None:
    spool = tmp_path / "spool"
    # A live journal writes events; keep a copy of its segment as it was once committed.
    j = journal.Journal(db_url, spool)
    try:
        first = [_event() for _ in range(30)]
        for e in first:
            j.append(e)
        assert j.flush(30)
        copy = j.segment.read_bytes()
    finally:
        assert j.close(10)
    assert _assert_exactly_once(db_url, {e.event_id for e in first})
    assert _spool_files(spool, journal.SEGMENT_SUFFIX) == []

    # The process "died" after the commit but before the checkpoint: its segment is still there
    # with a zero checkpoint, plus events written after the last commit.
    more = [_event() for _ in range(7)]
    seg = _dead_segment(spool, copy + b"".join(encode(e) for e in more), checkpoint=0)
    assert journal.recover(db_url, spool) == 0
    _assert_exactly_once(db_url, {e.event_id for e in first + more})
    assert not seg.exists() and not seg.with_suffix(".ckpt").exists()

    # A stale checkpoint in the middle of a committed segment, and no checkpoint at all.
    data = b"".join(encode(e) for e in first + more)
    _dead_segment(spool, data, checkpoint=len(encode(first[0])) * 3)
    _dead_segment(spool, data)
    assert journal.recover(db_url, spool) == 0
    _assert_exactly_once(db_url, {e.event_id for e in first + more})
    assert _spool_files(spool, journal.SEGMENT_SUFFIX) == [] and _spool_files(spool, ".ckpt") == []
    assert not (spool / "rejected.jsonl").exists()
    n = len(fetch_events(db_url))
    reliability(
        load="37 events; the committed segment replayed 3 times (zero, stale and no checkpoint)",
        fault="writer crash between the database commit and the spool checkpoint",
        expected=37,
        recorded=n,
        lost=37 - n,
    )


# -- 4. the database down ------------------------------------------------------------------------


def _pg_ctl(action: str) -> None:
    subprocess.run(
        f"pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n 1) main {action}",
        shell=True,
        check=True,
        capture_output=True,
        timeout=120,
    )


def _pg_accepts() -> bool:
    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def _pg_start_and_wait() -> None:
    _pg_ctl("start")
    deadline = time.monotonic() + 60
    while not _pg_accepts():
        assert time.monotonic() < deadline, "PostgreSQL did not come back"
        time.sleep(0.2)


def _calls(client: ledger.CerebrasClient, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        reply = client.chat.completions.create(model="gpt-oss-120b", messages=MSG, max_tokens=8)
        assert reply["id"].startswith("chatcmpl-") and reply["usage"]["total_tokens"] > 0
        ids.append(reply["id"])
    return ids


@pytest.fixture(params=["sqlite", "postgresql"])
def outage_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Like ``ledger_env``, but the PostgreSQL schema is made and dropped without a pooled
    connection (a pooled one would not survive the server restart of the test)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        schema = None
    else:
        problem = pg_problem()
        if problem:
            pytest.skip(problem)
        schema = f"t_{uuid.uuid4().hex[:12]}"
        url = pg_schema_url(schema)
    admin = sa.create_engine(PG_URL, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        if schema:
            with admin.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        monkeypatch.setenv("LEDGER_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("LEDGER_DATABASE_URL", url)
        monkeypatch.setenv("LEDGER_SPOOL_DIR", str(tmp_path / "spool"))
        yield url
    finally:
        journal.close_all(5.0)
        if schema:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _steady_calls(client: ledger.CerebrasClient, seconds: float, latencies: list[float]) -> list[str]:
    """Calls back to back for ``seconds``; each call's latency goes into ``latencies``."""
    ids: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or not ids:
        t0 = time.perf_counter()
        ids += _calls(client, 1)
        latencies.append(time.perf_counter() - t0)
    return ids


def _median_ms(values: list[float]) -> float:
    return round(sorted(values)[len(values) // 2] * 1000, 2) if values else 0.0


def _outage(outage_url: str, upstream: StandIn, seconds: float, reliability: Any) -> None:
    """Steady traffic before, during (``seconds``) and after the database is unavailable; no call
    fails, and the backlog drains by itself once the database is back (no flush is asked for)."""
    url = outage_url
    before: list[float] = []
    during: list[float] = []
    with ledger.CerebrasClient("outage", api_key="k", base_url=upstream.base_url, max_retries=0) as client:
        j = client.transport.journal
        ids = _steady_calls(
            client, 0.5, before
        )  # the ledger exists; the writer holds a (soon stale) connection
        assert client.flush(30)
        if url.startswith("sqlite"):
            # SQLite: another connection holds the write lock.
            fault = f"SQLite write-locked by another connection (BEGIN EXCLUSIVE) for {seconds:g} s"
            path = url.removeprefix("sqlite:///")
            lock = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                lock.execute("BEGIN EXCLUSIVE")
                ids += _steady_calls(client, seconds, during)
                assert j.pending() > 0
                assert lock.execute("SELECT count(*) FROM events").fetchone() == (len(before),)
            finally:
                lock.execute("ROLLBACK")
                lock.close()
        else:
            # PostgreSQL: the server really stopped.
            fault = f"PostgreSQL server stopped (pg_ctlcluster stop) for {seconds:g} s"
            try:
                _pg_ctl("stop")
                assert not _pg_accepts()
                ids += _steady_calls(client, seconds, during)
                assert j.pending() > 0
            finally:
                _pg_start_and_wait()
        deadline = time.monotonic() + 60
        while j.pending():  # drains by itself: nobody calls flush()
            assert time.monotonic() < deadline, "the backlog did not drain within 60 s"
            time.sleep(0.1)
    rows = fetch_events(url)
    assert Counter(r["upstream_id"] for r in rows) == Counter(ids)
    assert len({r["event_id"] for r in rows}) == len(rows) == len(ids)
    assert {s.upstream_id for s in upstream.served} == set(ids)
    assert all(r["status"] == "ok" and bool(r["priced"]) for r in rows)
    reliability(
        load=f"1 thread, calls back to back: {len(before)} before, {len(during)} during the outage "
        f"(median {_median_ms(before)} ms before, {_median_ms(during)} ms during)",
        fault=fault + "; backlog drained by itself after",
        expected=len(ids),
        recorded=len(rows),
        lost=len(ids) - len(rows),
    )


def test_calls_succeed_while_database_unavailable(
    outage_url: str, upstream: StandIn, reliability: Any
) -> None:
    _outage(outage_url, upstream, 2.0, reliability)


@pytest.mark.soak
def test_thirty_second_outage_under_steady_traffic(
    outage_url: str, upstream: StandIn, reliability: Any
) -> None:
    """The issue's figure: the database unavailable for 30 s under steady traffic (``pytest -m soak``)."""
    _outage(outage_url, upstream, 30.0, reliability)


# -- 5. two processes recover the same dead segments at once ---------------------------------------

_RECOVER = (
    "import sys, ledger.journal as j, ledger.store, sqlalchemy\n"
    "sys.stdin.readline()\n"
    "print(j.recover(sys.argv[1], sys.argv[2]))\n"
)


def test_two_processes_recover_the_same_segments(db_url: str, tmp_path: Path, reliability: Any) -> None:
    spool = tmp_path / "spool"
    events: list[CallEvent] = []
    for n in range(8):
        batch = [_event() for _ in range(250)]
        events += batch
        # some with a checkpoint part-way (as if their owner had written a prefix already)
        ckpt = len(b"".join(encode(e) for e in batch[:10])) if n % 3 == 0 else None
        _dead_segment(spool, b"".join(encode(e) for e in batch), checkpoint=ckpt)
    expected = {e.event_id for e in events}
    skipped = set()
    for seg in _spool_files(spool, journal.SEGMENT_SUFFIX):  # events before a checkpoint are not rewritten
        ckpt_path = seg.with_suffix(".ckpt")
        if ckpt_path.exists():
            head = seg.read_bytes()[: int(ckpt_path.read_text())]
            skipped |= {json.loads(line)[1] for line in head.splitlines()}
    assert len(skipped) == 30

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RECOVER, db_url, str(spool)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for _ in range(2)
    ]
    try:
        for p in procs:  # both have imported everything; let them go at once
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert 0 <= int(out) <= 8
    rows = _assert_exactly_once(db_url, expected - skipped)
    assert _spool_files(spool, journal.SEGMENT_SUFFIX) == [] and _spool_files(spool, ".ckpt") == []
    assert not (spool / "rejected.jsonl").exists()
    reliability(
        load="8 dead segments of 250 events (30 before checkpoints, already written)",
        fault="two processes recover the same spool at the same moment",
        expected=len(expected - skipped),
        recorded=len(rows),
        lost=len(expected - skipped) - len(rows),
    )


# -- files are owner-only ------------------------------------------------------------------------


def test_spool_and_database_files_are_owner_only(
    ledger_env: dict[str, str], upstream: StandIn, tmp_path: Path
) -> None:
    url = ledger_env["LEDGER_DATABASE_URL"]
    spool = tmp_path / "deep" / "er" / "spool"
    old = os.umask(0)  # the most permissive umask: modes must come from the ledger itself
    try:
        with ledger.CerebrasClient(
            "perm", api_key="k", base_url=upstream.base_url, max_retries=0, spool_dir=str(spool)
        ) as client:
            _calls(client, 3)
            assert client.flush(30)
            live = client.transport.journal.segment
            assert live.exists() and _mode(live) == 0o600
            assert _mode(live.with_suffix(".ckpt")) == 0o600
            # a dead segment with a corrupt line: recovery creates rejected.jsonl
            _dead_segment(spool, encode(_event()) + b'[1, "not an event"]\n')
            assert journal.recover(url, spool) == 1  # the live client's segment is busy
            assert _mode(spool / "rejected.jsonl") == 0o600
    finally:
        os.umask(old)
    for d in (tmp_path / "deep", tmp_path / "deep" / "er", spool):
        assert _mode(d) == 0o700, d
    for f in spool.iterdir():
        assert _mode(f) & 0o077 == 0, f
    if url.startswith("sqlite"):
        db = Path(url.removeprefix("sqlite:///"))
        files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
        assert db in files and len(files) >= 2  # the database, its WAL/SHM and migration lock
        for f in files:
            assert _mode(f) == 0o600, f


# -- a recovery racing the creation of a live segment ------------------------------------------


def test_recovery_never_takes_a_segment_being_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process scans the spool right after this one created its segment file but before
    it locked it: the scanner must not treat the new (empty, unlocked) segment as dead."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    spool = tmp_path / "spool"
    real_flock = fcntl.flock
    raced: list[int] = []

    def flock_after_a_scan(fd: int, op: int) -> None:
        if op == fcntl.LOCK_EX and not raced and os.readlink(f"/proc/self/fd/{fd}").startswith(str(spool)):
            raced.append(fd)
            # what a second process's startup scan does at this instant (another fd: its own lock)
            journal.recover(url, spool)
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_scan)
    try:
        j = journal.Journal(url, spool)
    except FileNotFoundError as exc:  # the scanner took the empty, unlocked segment and deleted it
        pytest.fail(f"a spool scan deleted the segment this journal had just created: {exc}")
    finally:
        monkeypatch.setattr(fcntl, "flock", real_flock)
    try:
        assert raced
        e = _event()
        j.append(e)
        # The event must sit in a spool file a later recovery can find if this process dies now.
        assert j.segment.exists(), "a scanner unlinked the live segment: a kill -9 now loses its events"
        assert any(encode(e) in p.read_bytes() for p in _spool_files(spool, journal.SEGMENT_SUFFIX))
        assert j.flush(30)
    finally:
        j.close(10)
    _assert_exactly_once(url, {e.event_id})


def test_steady_traffic_is_written_in_few_transactions(db_url: str, tmp_path: Path) -> None:
    """A writer round takes only what was spooled when it began, then lingers: under steady
    traffic it commits about one batch per linger. (It used to go on draining while calls kept
    arriving, so on PostgreSQL, where a commit takes milliseconds, it wrote a transaction per
    few events and took the caller's CPU doing it.)"""
    j = journal.Journal(db_url, tmp_path / "spool")
    try:
        j.append(_event())
        assert j.flush(30)  # the ledger is created and migrated before the measured part
        ids = set()
        start = time.monotonic()
        while time.monotonic() - start < 1.0:
            e = _event()
            j.append(e)
            ids.add(e.event_id)
            time.sleep(0.002)
        elapsed = time.monotonic() - start
        assert j.flush(30)
    finally:
        j.close(10)
    engine = sa.create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            batches = conn.execute(sa.text("SELECT count(*) FROM ingest_batches")).scalar_one()
            recorded = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    finally:
        engine.dispose()
    assert recorded == len(ids) + 1
    # one for the first event, one per linger while calls came, one for the flush at the end
    assert batches <= 1 + elapsed / journal.thread.LINGER_S + 2, (
        f"{batches} transactions for {len(ids)} events"
    )
