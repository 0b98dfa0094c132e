"""Journal: the durable write stage. Events go to a local spool first, the database second.

The call path only ever does :meth:`Journal.append`: encode the event as one JSON line and
``write(2)`` it, with ``O_APPEND``, to this process's *segment* file in the spool folder, then
wake the writer thread. The call returns right after; nothing on the call path touches the
database, SQLAlchemy or pricing.

Why this survives what it must:

* ``kill -9`` right after a call returns: the line is already in the kernel's page cache, which
  outlives the process. (Power loss is another matter: set ``LEDGER_SPOOL_FSYNC=1`` to fsync
  every line, at a cost of a disk flush per call.)
* The database down, locked or slow: the writer thread retries with back-off; calls never wait
  for it. Events wait in the spool file, not in memory, so a long outage costs disk, not RAM.
* Crash between the database commit and the spool checkpoint: every insert is
  ``ON CONFLICT (event_id) DO NOTHING``, so replaying a batch never counts an event twice.
* A dead process's segment: each live process holds an exclusive ``flock`` on its own segment.
  Any process that opens the same ledger (a client, or any CLI command) scans the spool, takes
  the lock of every segment whose owner died (the kernel releases a dead process's locks),
  writes what is left after its checkpoint, and deletes it. The lock makes that exactly-once
  among several processes; idempotent inserts make it exactly-once even if two take turns.
* A torn last line (a write cut by power loss or a full disk) is set aside in
  ``rejected.jsonl`` with a loud log line, never silently dropped and never half-inserted.

Files in the spool folder are created owner-only (0600, folder 0700). A segment that has been
fully written to the database and grown past 8 MiB is rotated, so the spool stays bounded.

Nothing in the spool can stall or fool the writer:

* Events are cut to the ledger's limits before they are encoded (:func:`ledger.events.bounded`),
  so every line fits one read; a line still longer than :data:`MAX_LINE` is set aside in
  ``rejected.jsonl`` instead of spooled, and a record too long to read already in a segment
  (another version, a bug) is set aside whole. The writer thread, the writer process and
  recovery all go on past it.
* The folder must be this user's (:func:`ledger.config.spool_folder`: another owner's is
  refused, one open to others made 0700), and a segment or checkpoint that is not a regular file
  of ours alone (another owner, writable by others, a symlink) is never ingested: logged once
  and left in place.

:class:`ProcessJournal` (``LEDGER_WRITER=process``) is the same journal with the live segment
drained by a child process (:mod:`ledger.journal.process`) instead of the thread.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import stat
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ledger.config import ConfigError, describe, first_line, owned_by_us, redact, redact_url, remember_secrets, spool_dir, spool_folder
from ledger.events import F_ID, CallEvent, EventDecodeError, decode_fields, encode
from ledger.call import stops

if TYPE_CHECKING:
    import subprocess

    from sqlalchemy import Connection, Engine

    from ledger.pricing import PriceBook

__all__ = ["Journal", "ProcessJournal", "check_url", "drain_spool", "journal_for"]

log = logging.getLogger("ledger.journal")

SEGMENT_SUFFIX = ".seg"
ROTATE_BYTES = 8 * 1024 * 1024
READ_BYTES = 1024 * 1024
# The longest line the call path spools. Events are cut to the ledger's limits before they are
# encoded (events.bounded), which keeps every line far below this; a line still longer is set
# aside in rejected.jsonl instead of spooled, so every spooled line fits one read.
MAX_LINE = READ_BYTES
BATCH_EVENTS = 2000
# A busy writer waits this long between rounds, so it commits hundreds of events at a time
# instead of a few: the database sees each event within a quarter second, and the writer's
# per-batch cost (transaction, ingest batch row, checkpoint: about 0.7 ms of CPU on SQLite and
# 2 ms on PostgreSQL) is spread thin. flush() cuts the wait short.
LINGER_S = 0.25
ORPHAN_SCAN_S = 30.0
PRICE_REFRESH_S = 5.0
MAX_OVERFLOW = 100_000


def check_url(url: str) -> str:
    """Refuse, cheaply and without importing SQLAlchemy, a URL the ledger cannot use."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in ("sqlite", "postgresql", "postgres") or "://" not in url:
        raise ConfigError(f"unsupported database URL {redact_url(url)!r}: use sqlite:/// or postgresql://")
    remember_secrets(url)  # hidden in every message the ledger logs
    return url


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError("short write to spool")
        view = view[n:]


class _Sink:
    """The database side, opened lazily on the writer thread (SQLAlchemy is imported here)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._book: PriceBook | None = None
        self._book_at = 0.0
        self._stops_due = 0.0
        self._stops_problem = False

    def engine(self) -> Engine:
        if self._engine is None:
            from ledger import store

            engine = store.make_engine(self.url)
            try:
                store.ensure_schema(engine)
            except Exception:
                engine.dispose()
                raise
            self._engine = engine
        return self._engine

    def write(self, records: list[list[Any]]) -> None:
        """Price and insert spool records (:func:`~ledger.events.decode_fields`) in one
        transaction (idempotent by event id)."""
        from ledger import store

        engine = self.engine()
        now = datetime.now(UTC)
        with store.write_transaction(engine) as conn:
            book = self.price_book(conn)
            try:
                store.insert_spooled(conn, records, book, now)
            except (ValueError, TypeError, ArithmeticError, AttributeError, LookupError) as exc:
                # priced out of range, a field of the wrong type or shape (made into a row in
                # Python, before the database sees it): this record, every time it is tried
                raise BadEvent(describe(exc)) from exc

    def price_book(self, conn: Connection) -> PriceBook:
        """The price book, re-read from ``conn`` when older than :data:`PRICE_REFRESH_S`."""
        if self._book is None or time.monotonic() - self._book_at > PRICE_REFRESH_S:
            from ledger import store

            self._book = store.load_price_book(conn)
            self._book_at = time.monotonic()
        return self._book

    def refresh_stops(self, folder: Path) -> None:
        """Publish the hard-budget stop file (:mod:`ledger.call.stops`) when due, once this sink has
        reached the database (a process that has written nothing yet does not connect for it).
        A failure is logged once and leaves the last file in place; it never stops the writer."""
        if self._engine is None or time.monotonic() < self._stops_due:
            return
        from ledger import store
        from ledger.budgets.stops import refresh  # the hand-off to the budgets stage, off the call path

        self._stops_due = time.monotonic() + stops.REFRESH_S
        try:
            with store.read_snapshot(self._engine) as conn:
                refresh(conn, lambda: self.price_book(conn), folder)
            self._stops_problem = False
        except Exception as exc:  # noqa: BLE001 - the writer must never die
            if not self._stops_problem:
                why = redact(first_line(exc), self.url)
                log.warning("ledger: cannot refresh the hard-budget stop list in %s (%s: %s); the last one "
                            "stays in force", folder, type(exc).__name__, why)
                self._stops_problem = True

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


class BadEvent(ValueError):
    """An event that cannot become a row (the same every time it is tried)."""


def _refused(exc: BaseException) -> bool:
    """Whether the database refused this data and will refuse it again (set it aside).

    Anything else (database down, locked, migrating, a bug) is retried later unchanged. The
    PostgreSQL ``COPY`` path raises the driver's own exceptions, so PEP 249's ``DataError`` and
    ``IntegrityError`` count as well as SQLAlchemy's wrappers of them."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, (BadEvent, sa_exc.IntegrityError, sa_exc.DataError)):
        return True
    if isinstance(exc, sa_exc.StatementError):
        return isinstance(exc.orig, (ValueError, TypeError))
    return any(c.__name__ in ("DataError", "IntegrityError") for c in type(exc).__mro__)


class _Reject:
    """Lines that can never be written (corrupt or refused by the database), kept, not lost."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "rejected.jsonl"

    def _open(self) -> int:
        """``rejected.jsonl`` for appending; if that name is not a regular file of ours alone (a
        symlink, a FIFO, another owner's), a fresh file beside it, so setting a record aside
        never blocks the writer."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and owned_by_us(st):
                return fd
            os.close(fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO):
                raise
        alt = self.path.with_name(f"rejected-{os.getpid()}-{time.time_ns():x}.jsonl")
        log.error("ledger: %s is not a file of ours alone; setting records aside in %s instead", self.path, alt)
        return os.open(alt, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)

    def keep(self, line: bytes, why: str) -> None:
        log.error("ledger: set aside a spool record in %s: %s", self.path, why)
        fd = self._open()
        try:
            _write_all(fd, line if line.endswith(b"\n") else line + b"\n")
        finally:
            os.close(fd)

    def keep_span(self, src: int, start: int, stop: int, why: str) -> None:
        """Set aside the bytes ``start:stop`` of the file ``src``, copied in pieces (a record
        too long to read whole is never read whole)."""
        log.error("ledger: set aside a spool record of %d bytes in %s: %s", stop - start, self.path, why)
        fd = self._open()
        try:
            at, last = start, b""
            while at < stop:
                piece = os.pread(src, min(READ_BYTES, stop - at), at)
                if not piece:
                    break
                _write_all(fd, piece)
                at, last = at + len(piece), piece
            if not last.endswith(b"\n"):
                _write_all(fd, b"\n")
        finally:
            os.close(fd)


def _set_aside_long(fd: int, start: int, end: int, reject: _Reject, *, final: bool) -> int | None:
    """A record at ``start`` longer than :data:`READ_BYTES` (no newline in the first read):
    set it aside whole and return the offset after it. If no newline comes before ``end``, the
    record is torn when ``final`` (a dead or closed segment: set aside up to ``end``), else still
    being written (``None``: the next round looks again)."""
    at = start + READ_BYTES
    while at < end:
        piece = os.pread(fd, min(READ_BYTES, end - at), at)
        if not piece:
            break
        nl = piece.find(b"\n")
        if nl >= 0:
            stop = at + nl + 1
            reject.keep_span(fd, start, stop, f"record longer than {READ_BYTES} bytes")
            return stop
        at += len(piece)
    if not final:
        return None
    reject.keep_span(fd, start, end, f"torn record longer than {READ_BYTES} bytes")
    return end


def _split_lines(data: bytes) -> tuple[list[bytes], int]:
    """Complete lines in ``data`` and how many bytes they span."""
    end = data.rfind(b"\n") + 1
    return (data[:end].splitlines() if end else []), end


def _write_lines(sink: _Sink, reject: _Reject, lines: list[bytes], *, trusted: bool = False) -> None:
    """Decode and write lines. Undecodable ones are set aside; a batch the database refuses
    is retried line by line, so one bad event never blocks the others."""
    records: list[list[Any]] = []
    raw: list[bytes] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(decode_fields(line, trusted=trusted))
            raw.append(line)
        except EventDecodeError as exc:
            reject.keep(line, str(exc))
    if not records:
        return
    try:
        sink.write(records)
    except Exception as exc:
        if not _refused(exc):
            raise
        for one, line in zip(records, raw, strict=True):
            try:
                sink.write([one])
            except Exception as inner:
                if not _refused(inner):
                    raise
                reject.keep(line, f"database refused the event: {type(inner).__name__}")


def _read_checkpoint(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _write_checkpoint(fd: int, offset: int) -> None:
    os.pwrite(fd, f"{offset:020d}\n".encode(), 0)


_foreign_said: set[str] = set()


def _foreign(path: Path, why: str) -> None:
    """Say once per process that a file in the spool folder is not ours alone, and is ignored."""
    if str(path) not in _foreign_said:
        _foreign_said.add(str(path))
        log.error("ledger: %s in the spool folder %s is %s; not ingested, left in place", path.name,
                  path.parent, why)


def _open_own(path: Path, flags: int) -> int | None:
    """``path`` opened without following a symlink, if it is a regular file this user alone may
    write; ``None`` (said once) if it is not, and ``FileNotFoundError`` if it is gone."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        _foreign(path, "a symlink" if exc.errno == errno.ELOOP else f"unreadable ({exc.strerror or exc})")
        return None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and owned_by_us(st):
        return fd
    os.close(fd)
    _foreign(path, "not a regular file" if not stat.S_ISREG(st.st_mode) else
             f"owned by uid {st.st_uid}" if st.st_uid != os.geteuid() else
             f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})")
    return None


def drain_segment(path: Path, sink: _Sink, reject: _Reject) -> bool:
    """Write what a dead process left in ``path`` and delete it. ``False`` if its owner lives.
    A segment that is not this user's alone (another owner, writable by others, a symlink) is
    never ingested: it is logged and left in place."""
    try:
        fd = _open_own(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    if fd is None:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if os.fstat(fd).st_nlink == 0:  # another process drained and removed it meanwhile
            return True
        ckpt = path.with_suffix(".ckpt")
        try:
            own_ckpt = _open_own(ckpt, os.O_RDONLY)
        except FileNotFoundError:
            own_ckpt = None
        if own_ckpt is not None:
            offset = _read_checkpoint_fd(own_ckpt)
            os.close(own_ckpt)
        else:  # none, or not ours: start over (a replay inserts nothing twice)
            offset = 0
            if ckpt.is_symlink() or ckpt.exists():
                ckpt.unlink(missing_ok=True)
        ckpt_fd = os.open(ckpt, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            while True:
                data = os.pread(fd, READ_BYTES, offset)
                if not data:
                    break
                lines, used = _split_lines(data)
                if not used:
                    if len(data) < READ_BYTES:  # the owner died mid-line: a torn record
                        reject.keep(data, "torn last record in a dead process's spool")
                        offset += len(data)
                    else:
                        offset = _set_aside_long(fd, offset, os.fstat(fd).st_size, reject, final=True) or offset
                    _write_checkpoint(ckpt_fd, offset)
                    continue
                _write_lines(sink, reject, lines)
                offset += used
                _write_checkpoint(ckpt_fd, offset)
        finally:
            os.close(ckpt_fd)
        path.unlink(missing_ok=True)
        ckpt.unlink(missing_ok=True)
        log.info("ledger: recovered spool segment %s", path.name)
        return True
    finally:
        os.close(fd)


def drain_spool(folder: Path, sink: _Sink, reject: _Reject, skip: Path | None = None) -> int:
    """Drain every orphaned segment in ``folder``; the number left because their owners live."""
    busy = 0
    for path in sorted(folder.glob("*" + SEGMENT_SUFFIX)):
        if path != skip and not drain_segment(path, sink, reject):
            busy += 1
    for path in folder.glob("*.new"):  # a process died between creating and naming a segment
        _remove_if_unlocked(path)
    return busy


def orphaned_segments(folder: Path) -> list[Path]:
    """Segments in ``folder`` whose owner is dead (nobody holds their lock)."""
    out = []
    for path in sorted(folder.glob("*" + SEGMENT_SUFFIX)):
        try:
            fd = _open_own(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        if fd is None:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            out.append(path)
        except BlockingIOError:
            pass  # a live process's segment
        finally:
            os.close(fd)
    return out


def _remove_if_unlocked(path: Path) -> None:
    try:
        fd = _open_own(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    if fd is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(fd)
        # Nothing is written before the rename; the age check leaves alone a file whose
        # creator is between os.open and flock right now.
        if st.st_size == 0 and time.time() - st.st_mtime > 60:
            path.unlink(missing_ok=True)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


class OpenAttempt(Protocol):
    """An attempt the call path has begun and not yet recorded (see ``ledger.call.transport``)."""

    def abandon(self, why: str) -> None: ...


class Journal:
    """One process's handle on one ledger: its spool segment and its writer thread.

    Get it with :func:`journal_for`; clients share it. :meth:`append` is the whole call path.
    """

    _wake_per_append = True  # the writer thread drains the live segment

    def __init__(self, url: str, folder: Path, *, fsync: bool = False) -> None:
        self.url = check_url(url)
        self.folder = folder
        self.fsync = fsync
        self._sink = _Sink(url)
        self._reject = _Reject(folder)
        self.stops = stops.StopList(folder / stops.STOP_FILE)  # hard budgets, read on the call path
        self._lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._wake = threading.Event()
        self._hurry = threading.Event()  # flush() cuts the writer's linger short
        self._stop = False
        self._overflow: deque[bytes] = deque()
        self._written = 0  # bytes appended to the live segment
        self._committed = 0  # bytes of it known to be in the database
        self._problem: str | None = None
        self._spool_problem = False  # the last append failed (disk full, read-only, ...)
        self._ckpt_problem = False  # the last checkpoint write failed
        self._closed = False
        self._writer_done = False  # the writer thread has returned (set under _lock)
        # Attempts begun and not yet recorded (streams still being read): ended as incomplete
        # when the ledger closes (and so at interpreter exit), not left to garbage collection.
        self.open_attempts: set[OpenAttempt] = set()
        spool_folder(folder)  # ours alone, or refused
        self._open_segment()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    # -- the call path ---------------------------------------------------------------------

    def append(self, event: CallEvent) -> None:
        """Make ``event`` durable locally and hand it to the writer. Never raises."""
        try:
            line = encode(event)
        except Exception as exc:  # noqa: BLE001 - a field of a type JSON cannot hold: never break the call
            log.critical("ledger: event %s cannot be encoded (%s); LOST", getattr(event, "event_id", "?"),
                         describe(exc))
            return
        if len(line) > MAX_LINE:
            self._too_long(line)
            return
        with self._lock:
            if self._closed:
                self._append_after_close(line)
                return
            try:
                _write_all(self._fd, line)
                if self.fsync:
                    os.fsync(self._fd)
                self._written += len(line)
                if self._spool_problem:
                    self._spool_problem = False
                    log.warning("ledger: the spool in %s is writable again", self.folder)
            except OSError as exc:
                self._spool_failed(line, exc)
        if self._wake_per_append or self._overflow:
            self._wake.set()

    def _too_long(self, line: bytes) -> None:
        try:
            self._reject.keep(line, f"event {event_id_of(line)} encodes to {len(line)} bytes, too long for "
                                    f"the spool (at most {MAX_LINE})")
        except OSError as exc:
            log.critical("ledger: event %s too long for the spool and not kept (%s); LOST",
                         event_id_of(line), exc.strerror or exc)

    def _spool_failed(self, line: bytes, exc: OSError) -> None:
        # Undo a partial line so the next one does not fuse with it, then keep the event in
        # memory for the writer to put straight into the database.
        first = not self._spool_problem
        self._spool_problem = True
        try:
            os.ftruncate(self._fd, self._written)
        except OSError:
            pass
        if len(self._overflow) < MAX_OVERFLOW:
            self._overflow.append(line)
            if first or len(self._overflow) % 1000 == 0:  # loud once, then a count, not a flood
                log.error("ledger: cannot write the spool in %s (%s); events kept in memory (%d waiting)",
                          self.folder, exc.strerror or exc, len(self._overflow))
        else:
            log.critical("ledger: spool unwritable and memory overflow full; event %s LOST",
                         event_id_of(line))

    def _append_after_close(self, line: bytes) -> None:
        """A call that ends after :meth:`close` (a thread still running at exit, or racing
        :func:`close_all`): the event gets a spool segment of its own, written whole under a
        name recovery ignores, then renamed, for the next process to recover."""
        path = self.folder / f"{os.getpid()}-{time.time_ns():x}{SEGMENT_SUFFIX}"
        fresh = path.with_suffix(".new")
        try:
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, line)
            finally:
                os.close(fd)
            os.rename(fresh, path)
            log.warning("ledger: an event arrived after the ledger was closed; kept in %s for recovery", path)
        except OSError as exc:
            fresh.unlink(missing_ok=True)
            log.critical("ledger: an event arrived after the ledger was closed and could not be spooled "
                         "(%s); event %s LOST", exc.strerror or exc, event_id_of(line))

    # -- segments --------------------------------------------------------------------------

    def _open_segment(self) -> None:
        name = f"{os.getpid()}-{time.time_ns():x}{SEGMENT_SUFFIX}"
        self.segment = self.folder / name
        # Made under a name recovery ignores, locked, then renamed: a segment is never seen
        # unlocked, so no other process can take a live one for dead.
        fresh = self.segment.with_suffix(".new")
        self._fd = os.open(fresh, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.rename(fresh, self.segment)
        self._rfd = os.open(self.segment, os.O_RDONLY)
        self._ckpt_fd = os.open(self.segment.with_suffix(".ckpt"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        self._written = self._committed = 0

    def _close_segment(self, remove: bool) -> None:
        seg, fds = self.segment, (self._ckpt_fd, self._rfd, self._fd)
        if remove:
            seg.unlink(missing_ok=True)
            seg.with_suffix(".ckpt").unlink(missing_ok=True)
        for fd in fds:  # closing _fd last releases the lock
            os.close(fd)

    def _rotate_if_due(self) -> None:
        with self._lock:
            if self._committed == self._written and self._written >= ROTATE_BYTES:
                self._close_segment(remove=True)
                self._open_segment()

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._writer_exit()

    def _writer_exit(self) -> None:
        # close() leaves the segment's files open while the writer is still in a database call
        # (closing them under it would let it write into whatever file reuses the numbers);
        # then the writer releases them itself, here.
        with self._lock:
            self._writer_done = True
            if not self._closed:
                return
            self._close_segment(remove=not self.pending())
        self._sink.dispose()

    def _loop(self) -> None:
        backoff = 0.1
        next_scan = 0.0
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            self._hurry.clear()
            try:
                if time.monotonic() >= next_scan:
                    drain_spool(self.folder, self._sink, self._reject, skip=self.segment)
                    next_scan = time.monotonic() + ORPHAN_SCAN_S
                self._drain_overflow()
                self._drain_to(self._written)
                self._rotate_if_due()
                self._back()
                self._sink.refresh_stops(self.folder)
                backoff = 0.1
            except Exception as exc:  # the writer must never die
                self._note_problem(exc)
                self._reconnect()
                self._notify()
                if self._stop:
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()
                continue
            self._notify()
            if self._stop:
                if self._committed < self._written:  # closing: what came in during this round too
                    self._wake.set()
                    continue
                return
            self._hurry.wait(LINGER_S)

    def _back(self) -> None:
        """Say once that the database takes writes again. Called after a batch is written and
        before the checkpoint moves, so a :meth:`flush` that returns has the recovery logged."""
        if self._problem:
            log.warning("ledger: database %s is back; writing the events that waited", redact_url(self.url))
            self._problem = None

    def _note_problem(self, exc: BaseException) -> None:
        from ledger.store import SchemaError

        what = describe(exc)
        if isinstance(exc, (SchemaError, ConfigError)):
            what = str(exc)
        what = redact(what, self.url)
        if what != self._problem:
            log.error("ledger: cannot write to %s (%s); events wait in %s",
                      redact_url(self.url), what, self.folder)
            self._problem = what

    def _reconnect(self) -> None:
        # A session opened while the database refused writes (a read-only server or role, a
        # file opened read-only) goes on refusing them after the database takes writes again:
        # drop the engine so the next try connects afresh.
        try:
            self._sink.dispose()
        except Exception:  # noqa: BLE001 - the writer must never die
            log.debug("ledger: could not close the database connections", exc_info=True)

    def _drain_overflow(self) -> None:
        while self._overflow:
            batch = list(self._overflow)[:BATCH_EVENTS]
            _write_lines(self._sink, self._reject, batch)
            self._back()
            for _ in batch:
                if self._overflow:  # close() may have moved them to the spool meanwhile
                    self._overflow.popleft()

    def _drain_to(self, end: int) -> None:
        """Write the live segment up to ``end``, in batches. Only what was there when the round
        began: events appended meanwhile wait for the next round, so steady traffic is written
        in one batch per linger, not in a stream of tiny transactions that each cost a commit."""
        while self._committed < end:
            self._drain_once(end)

    def _drain_once(self, end: int) -> None:
        """Write one batch of the live segment, from the checkpoint towards ``end``."""
        data = os.pread(self._rfd, min(READ_BYTES, end - self._committed), self._committed)
        lines, used = _split_lines(data)
        if used:
            lines = lines[:BATCH_EVENTS]
            used = sum(len(x) + 1 for x in lines)
            _write_lines(self._sink, self._reject, lines, trusted=True)  # our own, just written
            self._back()
            self._committed += used
        else:  # a record longer than a read (not one the call path spools): set aside, go on
            self._committed = _set_aside_long(self._rfd, self._committed, end, self._reject, final=True) or end
        try:
            _write_checkpoint(self._ckpt_fd, self._committed)
            self._ckpt_problem = False
        except OSError as exc:
            # The batch is in the database; a stale checkpoint only makes a recovery after a
            # crash replay it, which inserts nothing twice. A spool problem, not a database one.
            if not self._ckpt_problem:
                log.warning("ledger: cannot write the spool checkpoint in %s (%s); a recovery after "
                            "a crash would replay events already written", self.folder, exc.strerror or exc)
                self._ckpt_problem = True

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _save_overflow(self) -> None:
        """At close, put events still held in memory into the spool for the next process to
        write; one that still cannot be spooled is lost, and said so."""
        while self._overflow:
            line = self._overflow.popleft()
            try:
                _write_all(self._fd, line)
                self._written += len(line)
            except OSError as exc:
                try:
                    os.ftruncate(self._fd, self._written)
                except OSError:
                    pass
                log.critical("ledger: closing with the database unavailable and the spool in %s unwritable "
                             "(%s); event %s LOST", self.folder, exc.strerror or exc, event_id_of(line))

    _flush_poll_s = 0.2

    def _hurry_up(self) -> None:
        self._wake.set()
        self._hurry.set()

    def pending(self) -> int:
        """Bytes of events not yet known to be in the database (live segment + memory)."""
        return self._written - self._committed + sum(len(x) for x in self._overflow)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every appended event is in the database; ``False`` if time ran out
        (the events stay safe in the spool and a later process writes them)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.pending():
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._hurry_up()
                self._cond.wait(timeout=min(left, self._flush_poll_s))
        return True

    def close(self, timeout: float = 5.0) -> bool:
        """Flush, stop the writer and release the segment (left in place if not drained)."""
        if self._closed:
            return True
        for attempt in list(self.open_attempts):
            try:
                attempt.abandon("response abandoned: the ledger closed before the body was read")
            except Exception:  # noqa: BLE001 - closing goes on
                log.exception("ledger: could not end an open attempt at close")
        done = self.flush(timeout)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=max(timeout, 1.0))
        with self._lock:
            self._closed = True
            self._save_overflow()
            if not self._writer_done:  # still in a database call: it releases the segment itself
                return done
            self._close_segment(remove=done and not self.pending())
        self._sink.dispose()
        return done


class ProcessJournal(Journal):
    """A journal whose live segment goes to the database through a writer *process*
    (``LEDGER_WRITER=process``; see :mod:`ledger.journal.process`), so the calling process spends only
    the spool append per call, and never its GIL on database work.

    The thread stays, with little to do: it follows the writer's checkpoint (so :meth:`flush`
    and :meth:`close` know what is written), writes events kept in memory while the spool was
    unwritable, and recovers dead processes' segments. If the writer process cannot start or
    dies, the thread takes the segment over from the checkpoint (nothing is lost; replays insert
    nothing twice) and says so in the log.
    """

    _wake_per_append = False
    _flush_poll_s = 0.02

    def __init__(self, url: str, folder: Path, *, fsync: bool = False) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._close_timeout = 5.0
        self._spawned = False
        super().__init__(url, folder, fsync=fsync)

    def _open_segment(self) -> None:
        super()._open_segment()
        if not self._spawned:
            self._spawned = True
            self._child = self._spawn()
        else:
            self._tell(b"s " + os.fsencode(self.segment) + b"\n")

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        import subprocess

        # This very package, found as this process found it (appended: never shadows anything)
        root = str(Path(__file__).resolve().parent.parent)
        code = f"import sys; sys.path.append({root!r}); from ledger.journal.process import main; sys.exit(main())"
        try:
            return subprocess.Popen([sys.executable, "-c", code, str(self.folder), str(self.segment)],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    env=dict(os.environ, LEDGER_WRITER_URL=self.url))
        except Exception as exc:  # noqa: BLE001 - no interpreter to run, no fork: the thread writes
            log.error("ledger: cannot start the writer process (%s); writing from this process instead",
                      getattr(exc, "strerror", None) or exc)
            return None

    def _tell(self, message: bytes) -> None:
        child = self._child
        if child is None or child.stdin is None:
            return
        try:
            child.stdin.write(message)
            child.stdin.flush()
        except (OSError, ValueError):  # it died: the next round notices and takes over
            pass

    def _hurry_up(self) -> None:
        super()._hurry_up()
        self._tell(b"h\n")

    def _drain_to(self, end: int) -> None:
        child = self._child
        if child is None:
            super()._drain_to(end)
            return
        if self._stop:  # closing: the writer drains what is left and exits
            if child.stdin is not None:
                try:
                    child.stdin.close()
                except OSError:
                    pass
            try:
                child.wait(max(self._close_timeout, 1.0))
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: checked below
                pass
        self._committed = max(self._committed, _read_checkpoint_fd(self._ckpt_fd))
        status = child.poll()
        if status is None or self._committed >= end:
            if status is None and self._stop:
                raise OSError("the writer process did not finish in time; events wait in the spool")
            return
        if self._stop:
            raise OSError(f"the writer process exited ({status}) leaving events in the spool")
        log.error("ledger: the writer process exited (%s); writing from this process instead", status)
        self._child = None
        super()._drain_to(end)

    def close(self, timeout: float = 5.0) -> bool:
        self._close_timeout = timeout
        return super().close(timeout)


def _read_checkpoint_fd(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).strip() or 0)
    except (OSError, ValueError):
        return 0


def event_id_of(line: bytes) -> str:
    try:
        return str(decode_fields(line)[F_ID])
    except EventDecodeError:
        return "(unreadable)"


_journals: dict[tuple[str, str], Journal] = {}
_journals_lock = threading.Lock()


def journal_for(url: str, folder: str | os.PathLike[str] | None = None) -> Journal:
    """This process's journal for ``url`` (made on first use, shared by every client)."""
    path = spool_dir(url, folder)
    key = (url, str(path))
    with _journals_lock:
        j = _journals.get(key)
        if j is None or j._closed:
            kind = ProcessJournal if writer_mode() == "process" else Journal
            j = kind(url, path, fsync=os.environ.get("LEDGER_SPOOL_FSYNC", "") in ("1", "true"))
            _journals[key] = j
        return j


def writer_mode() -> str:
    """``LEDGER_WRITER``: ``thread`` (default) or ``process``."""
    mode = os.environ.get("LEDGER_WRITER", "thread").strip().lower() or "thread"
    if mode not in ("thread", "process"):
        raise ConfigError(f"LEDGER_WRITER must be 'thread' or 'process', not {mode[:40]!r}")
    return mode


def recover(url: str, folder: str | os.PathLike[str] | None = None) -> int:
    """Write every dead process's spool for ``url`` now (the CLI does this before each command).
    Returns how many segments were left because their owners are alive."""
    path = spool_dir(url, folder)
    if not path.is_dir():
        return 0
    spool_folder(path, create=False)  # ours alone, or refused
    sink = _Sink(url)
    try:
        return drain_spool(path, sink, _Reject(path))
    finally:
        sink.dispose()


def close_all(timeout: float = 5.0) -> None:
    with _journals_lock:
        journals = list(_journals.values())
        _journals.clear()
    for j in journals:
        j.close(timeout)


def _after_fork_in_child() -> None:
    # The child inherited the parent's segment fds and so its flock: drop them without
    # touching the files (they are the parent's), and start afresh on first use.
    global _journals_lock
    _journals_lock = threading.Lock()
    for j in _journals.values():
        j._closed = True
        child = getattr(j, "_child", None)
        if child is not None and child.stdin is not None:  # else the writer never sees the parent go
            try:
                child.stdin.close()
            except OSError:
                pass
        for fd in (j._fd, j._rfd, j._ckpt_fd):
            try:
                os.close(fd)
            except OSError:
                pass
    _journals.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(close_all, 3.0)
