"""Storage faults under the ledger: the spool's disk fills up, the database goes read-only.

What the reliability issue asks: "The database goes read-only or the disk fills up under the
spool. The caller still gets its response, the condition is logged loudly, and nothing already
spooled is lost." Every fault here is real, not mocked:

* **Disk full**: the spool folder is a tiny ``tmpfs`` (``mount -t tmpfs -o size=64k``) filled
  with a filler file until ``write(2)`` fails with ``ENOSPC``. Appends that no longer fit are kept
  in memory (up to ``journal.sink.MAX_OVERFLOW``) and written to the database by the writer; beyond
  that, each lost event is logged CRITICAL with its id, and the tests count them.
* **SQLite read-only**: the database file lives on its own ``tmpfs``, remounted with
  ``mount -o remount,ro`` (root bypasses ``chmod``, so permissions would prove nothing). The
  kernel refuses to remount a filesystem read-only while a file on it is open for writing
  (``EBUSY``), and a live writer keeps its SQLite connection open, so the test closes the first
  client's journal (as a restart would), remounts, and a new client runs against the read-only
  file.
* **Closing with events in memory**: the process closes the ledger (exit) while the database
  still refuses writes: events held in memory go to the spool if it has room again, else each
  is logged CRITICAL as lost; and a writer stuck in a database call at close keeps its files
  (it must never write into descriptors the process has reused for other files).
* **PostgreSQL read-only**: the writing client logs in as a role of its own with
  ``ALTER ROLE ... SET default_transaction_read_only = on``, and its session is cut (as a
  failover to a read-only server does), so the writer's next session gets "cannot execute
  INSERT in a read-only transaction". Only that role is affected, never database ``test``.
  The setting is then lifted *without* cutting the session again: the ledger has to reconnect
  by itself.

Calls go through ``ledger.CerebrasClient`` to the loopback :class:`~ledger.testing.StandIn`.
The database is kept from committing, where a test needs events to *wait*, with a real lock
(``BEGIN EXCLUSIVE`` on SQLite, ``LOCK TABLE events IN EXCLUSIVE MODE`` on PostgreSQL).
Every wait is a poll with a deadline; nothing asserts on timing. Each test records its
measured numbers with the ``reliability`` fixture.

Mounts are made with ``mount(8)``, so these tests need root; without it (or when mounting is
not permitted) they skip and say why. Every mount is unmounted in teardown, even on failure.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

import ledger
from ledger import journal, store
from ledger.journal.codec import decode
from ledger.testing import StandIn
from tests.helpers import PG_URL, fetch_events, make_event, pg_problem, pg_schema_url

MSG = [{"role": "user", "content": "count to three please"}]
KEPT_IN_MEMORY = "events kept in memory"


# -- mounts ------------------------------------------------------------------------------------


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)


def _remount(path: Path, mode: str) -> None:
    out = _run("mount", "-o", f"remount,{mode}", str(path))
    assert out.returncode == 0, f"mount -o remount,{mode} {path} failed: {out.stderr.strip()}"


def _unmount(path: Path) -> None:
    _run("mount", "-o", "remount,rw", str(path))  # harmless if it is rw already
    for _ in range(50):
        if _run("umount", str(path)).returncode == 0:
            return
        time.sleep(0.1)
    _run("umount", "-l", str(path))  # last resort: detach it now, freed once nothing holds it


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """``mount(name, size)``: a fresh tmpfs of ``size`` at ``tmp_path/name``, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (running as uid {os.geteuid()})")
    mounts: list[Path] = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir(mode=0o700)
        out = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
        if out.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here: {out.stderr.strip()}")
        mounts.append(path)
        return path

    try:
        yield mount
    finally:
        journal.close_all(5.0)  # files on a mount must be closed before it can be unmounted
        for path in reversed(mounts):
            _unmount(path)


def _fill(folder: Path) -> Path:
    """Fill the filesystem under ``folder`` with one file until ``write(2)`` says ENOSPC."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    chunk = b"\0" * 4096
    try:
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    assert shutil.disk_usage(folder).free == 0
    return filler


# -- the ledger --------------------------------------------------------------------------------


def _ensure_ledger(url: str) -> None:
    """Make the ledger's schema now, so a test can lock it before the first call."""
    engine = store.make_engine(url)
    try:
        store.ensure_schema(engine)
    finally:
        engine.dispose()


@contextlib.contextmanager
def _writes_held(url: str) -> Iterator[None]:
    """Keep the ledger's writer from committing (it waits on a real lock) until the block ends."""
    if url.startswith("sqlite"):
        path = store.sqlite_path(url)
        assert path is not None
        lite = sqlite3.connect(path, timeout=5, isolation_level=None)
        try:
            lite.execute("BEGIN EXCLUSIVE")
            yield
        finally:
            lite.close()  # rolls back and releases the lock
        return
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("LOCK TABLE events IN EXCLUSIVE MODE"))  # reads pass, INSERT waits
            try:
                yield
            finally:
                conn.rollback()
    finally:
        engine.dispose()


def _client(upstream: StandIn, url: str, spool: Path) -> ledger.CerebrasClient:
    return ledger.CerebrasClient(
        "storage-faults",
        api_key="sk-test-key",
        base_url=upstream.base_url,
        database_url=url,
        spool_dir=str(spool),
        max_retries=0,
    )


def _calls(client: ledger.CerebrasClient, n: int) -> list[str]:
    """Make ``n`` calls; each must return the normal response. Their chatcmpl ids."""
    ids = []
    for _ in range(n):
        reply = client.chat.completions.create(model="gpt-oss-120b", messages=MSG, max_tokens=8)
        assert reply["id"].startswith("chatcmpl-")
        assert reply["usage"]["total_tokens"] > 0 and reply["choices"][0]["message"]["content"]
        ids.append(reply["id"])
    return ids


def _wait(what: str, ok: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def _served(upstream: StandIn, n: int) -> list[str]:
    """The stand-in records a completion just after sending it: wait for all ``n``."""
    _wait(f"{n} served completions", lambda: len(upstream.served) >= n)
    return [s.upstream_id for s in upstream.served]


def _segment_ids(path: Path) -> list[str]:
    """Upstream ids of the events in a spool segment; it must hold whole lines only."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "a partial record was left in the spool"
    return [decode(line).upstream_id or "" for line in data.splitlines()]


def _assert_ledger_matches(url: str, expected: list[str]) -> list[dict[str, Any]]:
    """The events table holds exactly one event per id in ``expected``, and nothing else."""
    rows = fetch_events(url)
    assert len({r["event_id"] for r in rows}) == len(rows), "duplicated event_id"
    by_upstream = Counter(r["upstream_id"] for r in rows)
    missing = set(expected) - set(by_upstream)
    extra = set(by_upstream) - set(expected)
    assert not missing and not extra, f"missing {len(missing)}, unexpected {len(extra)}"
    assert [u for u, n in by_upstream.items() if n != 1] == []
    assert all(r["status"] == "ok" and bool(r["priced"]) for r in rows)
    return rows


def _records(caplog: pytest.LogCaptureFixture, level: int, text: str = "") -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("ledger") and r.levelno >= level and text in r.getMessage()
    ]


def _count_write_attempts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every batch the writer tries to write (a spy: the real write still runs)."""
    attempts = [0]
    real = journal.writer.Sink.write

    def counting(self: journal.writer.Sink, events: list[Any]) -> None:
        attempts[0] += 1
        real(self, events)

    monkeypatch.setattr(journal.writer.Sink, "write", counting)
    return attempts


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (
        "LEDGER_PROJECT",
        "CEREBRAS_API_KEY",
        "LAVA_FORWARD_TOKEN",
        "CEREBRAS_BASE_URL",
        "LAVA_BASE_URL",
        "LEDGER_SPOOL_FSYNC",
    ):
        monkeypatch.delenv(k, raising=False)


# -- 1. the disk under the spool fills up ----------------------------------------------------------


def test_disk_full_under_the_spool(
    db_url: str,
    tmpfs: Callable[[str, str], Path],
    upstream: StandIn,
    caplog: pytest.LogCaptureFixture,
    reliability: Any,
    no_env: None,
) -> None:
    """Calls keep returning while the spool's disk is full; what no longer fits waits in memory
    and reaches the database; what was spooled before is not lost; once space is back, events
    spool again."""
    caplog.set_level(logging.INFO, logger="ledger")
    n_before, n_full, n_after = 10, 30, 10
    _ensure_ledger(db_url)
    spool = tmpfs("spool", "64k")
    with _writes_held(db_url):  # so events *wait*: in the spool, then in memory
        client = _client(upstream, db_url, spool)
        j = client.transport.journal
        before = _calls(client, n_before)
        assert j.pending() > 0
        assert _segment_ids(j.segment) == before  # spooled, not yet in the database

        filler = _fill(spool)
        during = _calls(client, n_full)  # every one returns its normal response
        kept = _records(caplog, logging.ERROR, KEPT_IN_MEMORY)
        spooled_during = _segment_ids(j.segment)[n_before:]
        # Appends that still fit in the segment's last page went there; the rest are in memory.
        assert len(kept) == 1, "the full disk is logged once per outage, not once per call"
        assert j._overflow, "the full disk never refused an append"
        held = len(j._overflow)
        assert len(spooled_during) + len(j._overflow) == n_full
        assert set(spooled_during) <= set(during)
        for r in kept:  # loud, and it names the condition and the folder
            assert r.name == "ledger.journal" and r.levelno == logging.ERROR
            assert os.strerror(errno.ENOSPC) in r.getMessage() and str(spool) in r.getMessage()
        assert not _records(caplog, logging.CRITICAL), "nothing may be lost below MAX_OVERFLOW"
        assert not (spool / "rejected.jsonl").exists()

    # The database takes writes again while the disk is still full: everything reaches it.
    ids = before + during
    _wait("the waiting events in the database", lambda: len(fetch_events(db_url)) == len(ids))
    assert client.flush(30), "the writer stays stuck while the spool's disk is full"
    assert j.pending() == 0 and not j._overflow
    _assert_ledger_matches(db_url, ids)
    # The database was never at fault, so no line may blame it. The checkpoint (never written
    # before the disk filled) could not be saved: said once, as what it is.
    assert not _records(caplog, logging.ERROR, "cannot write to")
    assert len(_records(caplog, logging.WARNING, "checkpoint")) == 1

    # Space is back: new calls are spooled again, with no new errors.
    filler.unlink()
    errors = len(_records(caplog, logging.ERROR))
    after = _calls(client, n_after)
    assert len(_records(caplog, logging.ERROR)) == errors
    assert len(_records(caplog, logging.WARNING, "writable again")) == 1
    assert not j._overflow
    assert set(after) <= set(_segment_ids(j.segment))
    assert client.flush(30)
    assert int(j.segment.with_suffix(".ckpt").read_text()) == j.segment.stat().st_size  # saved again
    ids += after
    served = _served(upstream, len(ids))
    assert sorted(served) == sorted(ids)
    rows = _assert_ledger_matches(db_url, served)
    assert len(rows) == len(served) == n_before + n_full + n_after
    reliability(
        load=f"{len(ids)} calls, 1 thread ({n_before} before, {n_full} during, {n_after} after)",
        fault=f"spool tmpfs 64k full (ENOSPC), database write-locked meanwhile; "
        f"{held} events held in memory, {len(spooled_during)} fit the last page",
        expected=len(served),
        recorded=len(rows),
        lost=len(served) - len(rows),
    )


def test_disk_full_and_memory_overflow_full(
    db_url: str,
    tmpfs: Callable[[str, str], Path],
    upstream: StandIn,
    caplog: pytest.LogCaptureFixture,
    reliability: Any,
    no_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``MAX_OVERFLOW`` events in memory, an event is lost: the caller still gets its
    response, each loss is logged CRITICAL with the event id, and the count is exact."""
    caplog.set_level(logging.INFO, logger="ledger")
    cap, n = 3, 10
    monkeypatch.setattr(journal.sink, "MAX_OVERFLOW", cap)
    _ensure_ledger(db_url)
    spool = tmpfs("spool", "64k")
    with _writes_held(db_url):  # the writer cannot empty the memory overflow meanwhile
        client = _client(upstream, db_url, spool)
        j = client.transport.journal
        filler = _fill(spool)  # before the first append: the empty segment has no page to write to
        ids = _calls(client, n)
        kept = _records(caplog, logging.ERROR, KEPT_IN_MEMORY)
        lost = _records(caplog, logging.CRITICAL)
        assert len(kept) == 1 and len(j._overflow) == cap
        assert len(lost) == n - cap
        assert j.segment.stat().st_size == 0
    lost_ids = []
    for r in lost:
        assert r.name == "ledger.journal" and "LOST" in r.getMessage()
        event_id = str(r.args[-1]) if isinstance(r.args, tuple) else ""  # the id is the last argument
        assert str(uuid.UUID(event_id)) == event_id and event_id in r.getMessage()
        lost_ids.append(event_id)
    assert len(set(lost_ids)) == len(lost_ids)

    assert client.flush(30)  # the ones in memory reach the database, the disk still full
    rows = fetch_events(db_url)
    served = _served(upstream, n)
    assert sorted(served) == sorted(ids)
    assert len(rows) == cap and len({r["event_id"] for r in rows}) == cap
    assert not {r["event_id"] for r in rows} & set(lost_ids)
    assert {r["upstream_id"] for r in rows} <= set(served)
    # Every served call is either in the ledger or named in a CRITICAL line: none vanishes unsaid.
    assert len(served) - len(rows) == len(lost_ids) == n - cap
    recorded = len(rows)

    filler.unlink()
    more = _calls(client, 2)
    assert _records(caplog, logging.WARNING, "writable again")
    assert client.flush(30)
    rows = fetch_events(db_url)
    assert {r["upstream_id"] for r in rows} >= set(more) and len(rows) == cap + 2
    reliability(
        load=f"{n} calls, 1 thread",
        fault=f"spool tmpfs full before the first append, database write-locked, MAX_OVERFLOW={cap}",
        expected=len(served),
        recorded=recorded,
        lost=len(served) - recorded,
    )


# -- 2. events still in memory when the process closes the ledger ------------------------------------


@pytest.mark.parametrize("disk", ["space back", "still full"])
def test_events_in_memory_at_close(
    tmpfs: Callable[[str, str], Path],
    upstream: StandIn,
    caplog: pytest.LogCaptureFixture,
    reliability: Any,
    no_env: None,
    disk: str,
) -> None:
    """The spool's disk filled and the database is read-only, then the process closes the ledger
    (exit): events held in memory go to the spool if it has room again (a later process writes
    them), otherwise each is logged CRITICAL as lost. None may vanish without a word."""
    caplog.set_level(logging.INFO, logger="ledger")
    n = 6
    dbdir = tmpfs("db", "16m")
    url = f"sqlite:///{dbdir / 'ledger.db'}"
    _ensure_ledger(url)
    _remount(dbdir, "ro")
    spool = tmpfs("spool", "64k")
    client = _client(upstream, url, spool)
    j = client.transport.journal
    filler = _fill(spool)
    ids = _calls(client, n)
    assert len(j._overflow) == n and len(_records(caplog, logging.ERROR, KEPT_IN_MEMORY)) == 1
    _wait(
        "the writer to report the read-only database",
        lambda: bool(_records(caplog, logging.ERROR, "cannot write to")),
    )
    if disk == "space back":
        filler.unlink()
    assert j.close(0.5) is False  # the database still refuses: not everything was written
    client.close()
    _wait("the writer to stop", lambda: not j._thread.is_alive())
    lost = _records(caplog, logging.CRITICAL, "LOST")

    _remount(dbdir, "rw")
    assert journal.recover(url, spool) == 0  # the next process writes what was left in the spool
    rows = fetch_events(url)
    served = _served(upstream, n)
    assert sorted(served) == sorted(ids)
    if disk == "space back":
        assert lost == []
        _assert_ledger_matches(url, served)
    else:
        assert rows == []
        assert len(lost) == n
        assert all(r.levelno == logging.CRITICAL and str(spool) in r.getMessage() for r in lost)
        assert len({str(r.args[-1]) for r in lost if isinstance(r.args, tuple)}) == n  # each names its event
    assert len(rows) + len(lost) == n
    reliability(
        load=f"{n} calls, 1 thread, then close",
        fault=f"spool tmpfs full, SQLite read-only, process closes the ledger with the disk {disk}",
        expected=n,
        recorded=len(rows),
        lost=n - len(rows),
    )


def test_close_while_the_writer_waits_on_the_database(
    tmp_path: Path, upstream: StandIn, reliability: Any, no_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process closes the ledger while the writer is stuck in a database call (a write lock
    held elsewhere): the writer must not be left with closed file descriptors, which the next
    files the process opens reuse (it would write its checkpoint into one of them). It finishes
    its batch once the database answers, then releases the spool itself."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    spool = tmp_path / "spool"
    _ensure_ledger(url)
    attempts = _count_write_attempts(monkeypatch)
    client = _client(upstream, url, spool)
    j = client.transport.journal
    others = []
    try:
        with _writes_held(url):
            ids = _calls(client, 5)
            _wait("the writer to wait on the database", lambda: attempts[0] >= 1)
            assert j.close(0.2) is False
            assert j._thread.is_alive()  # still inside the database call
            # Files opened now get the lowest free descriptor numbers, the journal's old ones included.
            others = [open(tmp_path / f"other-{i}", "w+b") for i in range(4)]  # noqa: SIM115
        _wait("the writer to finish", lambda: not j._thread.is_alive())
        written_into = [f.name for f in others if os.fstat(f.fileno()).st_size]
        assert written_into == [], "the writer wrote spool data into files it does not own"
    finally:
        for f in others:
            f.close()
        client.close()
    rows = _assert_ledger_matches(url, _served(upstream, len(ids)))
    assert len(rows) == len(ids) == 5
    assert not list(spool.glob("*" + journal.SEGMENT_SUFFIX)), "the drained segment was left behind"
    reliability(
        load="5 calls, then close",
        fault="close while the writer waits on a SQLite write lock",
        expected=len(ids),
        recorded=len(rows),
        lost=len(ids) - len(rows),
    )


# -- 3. the database goes read-only ------------------------------------------------------------------


def test_sqlite_read_only_filesystem(
    tmpfs: Callable[[str, str], Path],
    tmp_path: Path,
    upstream: StandIn,
    caplog: pytest.LogCaptureFixture,
    reliability: Any,
    no_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SQLite file's filesystem is remounted read-only: calls still succeed, the writer logs
    the problem once however often it retries, events wait in the spool, and once the
    filesystem is writable again they drain exactly once."""
    caplog.set_level(logging.INFO, logger="ledger")
    dbdir = tmpfs("db", "16m")
    url = f"sqlite:///{dbdir / 'ledger.db'}"
    spool = tmp_path / "spool"
    first = _client(upstream, url, spool)
    ids = _calls(first, 5)
    assert first.flush(30)
    assert first.transport.journal.close(10)  # no file on the mount is open for writing now
    first.close()
    _remount(dbdir, "ro")
    with pytest.raises(OSError) as refused:
        os.open(dbdir / "ledger.db", os.O_RDWR)
    assert refused.value.errno == errno.EROFS

    attempts = _count_write_attempts(monkeypatch)
    caplog.clear()
    client = _client(upstream, url, spool)
    j = client.transport.journal
    assert j is not first.transport.journal
    n = 20
    ids += _calls(client, n)
    _wait("three failed write attempts", lambda: attempts[0] >= 3)
    assert j.pending() > 0 and client.flush(0.2) is False
    problems = _records(caplog, logging.ERROR)
    assert len(problems) == 1, [r.getMessage() for r in problems]  # once, not per attempt
    msg = problems[0].getMessage()
    assert problems[0].name == "ledger.journal" and "cannot write to" in msg
    assert os.strerror(errno.EROFS) in msg and str(spool) in msg
    seen = attempts[0]

    _remount(dbdir, "rw")
    assert client.flush(30)
    assert attempts[0] > seen
    assert _records(caplog, logging.WARNING, "is back")
    assert len(_records(caplog, logging.ERROR)) == 1
    served = _served(upstream, len(ids))
    rows = _assert_ledger_matches(url, served)
    assert len(rows) == len(served) == 5 + n
    reliability(
        load=f"{len(ids)} calls, 1 thread",
        fault="SQLite file's tmpfs remounted read-only (EROFS), then read-write",
        expected=len(served),
        recorded=len(rows),
        lost=len(served) - len(rows),
    )


@pytest.fixture
def pg_read_only_role() -> Iterator[tuple[str, str, sa.Engine]]:
    """A login role of its own owning a fresh schema: (role, its ledger URL, an admin engine)."""
    problem = pg_problem()
    if problem:
        pytest.skip(problem)
    tag = uuid.uuid4().hex[:12]
    role, schema, password = f"ledger_ro_{tag}", f"t_{tag}", f"pw-{uuid.uuid4().hex}"
    admin = sa.create_engine(PG_URL, poolclass=NullPool, connect_args={"connect_timeout": 5})
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"))  # hex: no quoting needed
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"'))
    url = sa.engine.make_url(pg_schema_url(schema)).set(username=role, password=password)
    try:
        yield role, url.render_as_string(hide_password=False), admin
    finally:
        journal.close_all(5.0)
        with admin.begin() as conn:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": role},
            )
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def _sessions(admin: sa.Engine, role: str) -> int:
    with admin.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE usename = :r"), {"r": role}
            ).scalar_one()
        )


def test_postgresql_read_only(
    pg_read_only_role: tuple[str, str, sa.Engine],
    upstream: StandIn,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    reliability: Any,
    no_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL refuses the ledger's writes ("cannot execute INSERT in a read-only
    transaction"): calls succeed, the writer logs it once, events wait in the spool; when the
    setting is lifted the ledger reconnects by itself and the backlog drains exactly once."""
    caplog.set_level(logging.INFO, logger="ledger")
    role, url, admin = pg_read_only_role
    password = sa.engine.make_url(url).password
    assert password
    spool = tmp_path / "spool"
    client = _client(upstream, url, spool)
    j = client.transport.journal
    ids = _calls(client, 3)
    assert client.flush(30)  # the ledger exists, made by the role; its writer holds a session

    with admin.begin() as conn:
        conn.execute(sa.text(f'ALTER ROLE "{role}" SET default_transaction_read_only = on'))
        cut = conn.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) "
                "FROM pg_stat_activity WHERE usename = :r) t"
            ),
            {"r": role},
        ).scalar_one()
    assert cut >= 1, "the writer had no live session to cut"
    _wait("the role's sessions to end", lambda: _sessions(admin, role) == 0)
    probe = sa.create_engine(url, poolclass=NullPool)  # the fault is real: the role cannot write
    try:
        with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"), probe.begin() as conn:
            conn.execute(sa.text("INSERT INTO leases (name, holder, expires_at) VALUES ('x', 'y', now())"))
    finally:
        probe.dispose()

    attempts = _count_write_attempts(monkeypatch)
    n = 20
    ids += _calls(client, n)
    _wait("three failed write attempts", lambda: attempts[0] >= 3)
    assert j.pending() > 0 and client.flush(0.2) is False
    problems = _records(caplog, logging.ERROR)
    assert len(problems) == 1, [r.getMessage() for r in problems]  # once, not per attempt
    assert problems[0].name == "ledger.journal"
    assert "read-only transaction" in problems[0].getMessage() and str(spool) in problems[0].getMessage()
    assert len(fetch_events(url)) == 3
    seen = attempts[0]

    with admin.begin() as conn:  # lifted; the writer's session is left alone this time
        conn.execute(sa.text(f'ALTER ROLE "{role}" RESET default_transaction_read_only'))
    assert client.flush(30), "the ledger kept its read-only session after the database took writes again"
    assert attempts[0] > seen
    assert _records(caplog, logging.WARNING, "is back")
    assert len(_records(caplog, logging.ERROR)) == 1
    assert not [r for r in caplog.records if password in r.getMessage()], "a password reached the log"
    served = _served(upstream, len(ids))
    rows = _assert_ledger_matches(url, served)
    assert len(rows) == len(served) == 3 + n
    reliability(
        load=f"{len(ids)} calls, 1 thread",
        fault="PostgreSQL role set default_transaction_read_only=on and its session cut, then the "
        "setting lifted",
        expected=len(served),
        recorded=len(rows),
        lost=len(served) - len(rows),
    )


def test_an_event_after_close_is_spooled_for_recovery(tmp_path: Path, reliability: Any) -> None:
    """A call that ends after the ledger closed (a thread still running at exit) is not lost:
    its event gets a segment of its own, which the next process recovers."""
    from ledger import journal as jmod

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    spool = tmp_path / "spool"
    j = jmod.Journal(url, spool)
    assert j.close(10)
    late = [
        make_event(project="late", status="incomplete", stream=True, usage=None, latency_us=1)
        for _ in range(3)
    ]
    for e in late:
        j.append(e)
    assert len(list(spool.glob("*.seg"))) == 3 and not list(spool.glob("*.new"))
    assert jmod.recover(url, str(spool)) == 0  # none left behind
    rows = fetch_events(url)
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in late)
    reliability(
        load="3 events appended after close()",
        fault="journal already closed (exit racing a call)",
        expected=3,
        recorded=len(rows),
        lost=3 - len(rows),
    )
