"""Sink: the journal the call path appends to (:class:`Journal`), one per process and ledger.

:meth:`Journal.append` is the whole call path: the event encoded as one line
(:func:`~ledger.journal.codec.encode`) and written, with ``O_APPEND``, to this process's live
segment, then the writer woken. It never raises and never touches the database, SQLAlchemy or
pricing. If the spool is unwritable, events wait in memory (up to :data:`MAX_OVERFLOW`) for the
writer to put straight into the database; a line longer than :data:`MAX_LINE` is set aside instead
of spooled; an event that arrives after :meth:`Journal.close` gets a segment of its own, for
recovery. The journal also owns its live segment (made under a name recovery ignores, locked, then
named; rotated once drained past :data:`ROTATE_BYTES`), the attempts still open (ended at close),
:meth:`Journal.flush` and :meth:`Journal.close`. Its writer thread's loop is
:class:`~ledger.journal.thread.WriterThread`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from ledger.call import stops
from ledger.config import ConfigError, describe, redact_url, remember_secrets, spool_folder
from ledger.events import CallEvent
from ledger.journal.codec import encode, event_id_of
from ledger.journal.spool import READ_BYTES, SEGMENT_SUFFIX, Reject, write_all
from ledger.journal.thread import WriterThread
from ledger.journal.writer import Sink

__all__ = ["MAX_LINE", "MAX_OVERFLOW", "ROTATE_BYTES", "Journal", "check_url"]

log = logging.getLogger("ledger.journal")  # the stage's one logger

ROTATE_BYTES = 8 * 1024 * 1024
# The longest line the call path spools. Events are cut to the ledger's limits before they are
# encoded (events.bounded), which keeps every line far below this; a line still longer is set
# aside in rejected.jsonl instead of spooled, so every spooled line fits one read.
MAX_LINE = READ_BYTES
MAX_OVERFLOW = 100_000


def check_url(url: str) -> str:
    """Refuse, cheaply and without importing SQLAlchemy, a URL the ledger cannot use."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in ("sqlite", "postgresql", "postgres") or "://" not in url:
        raise ConfigError(f"unsupported database URL {redact_url(url)!r}: use sqlite:/// or postgresql://")
    remember_secrets(url)  # hidden in every message the ledger logs
    return url


class OpenAttempt(Protocol):
    """An attempt the call path has begun and not yet recorded (see ``ledger.call.transport``)."""

    def abandon(self, why: str) -> None: ...


class Journal(WriterThread):
    """One process's handle on one ledger: its spool segment and its writer thread.

    Get it with :func:`~ledger.journal.registry.journal_for`; clients share it. :meth:`append` is the whole call path.
    """

    _wake_per_append = True  # the writer thread drains the live segment

    def __init__(self, url: str, folder: Path, *, fsync: bool = False) -> None:
        self.url = check_url(url)
        self.folder = folder
        self.fsync = fsync
        self._sink = Sink(url)
        self._reject = Reject(folder)
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
            log.critical(
                "ledger: event %s cannot be encoded (%s); LOST",
                getattr(event, "event_id", "?"),
                describe(exc),
            )
            return
        if len(line) > MAX_LINE:
            self._too_long(line)
            return
        with self._lock:
            if self._closed:
                self._append_after_close(line)
                return
            try:
                write_all(self._fd, line)
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
            self._reject.keep(
                line,
                f"event {event_id_of(line)} encodes to {len(line)} bytes, too long for "
                f"the spool (at most {MAX_LINE})",
            )
        except OSError as exc:
            log.critical(
                "ledger: event %s too long for the spool and not kept (%s); LOST",
                event_id_of(line),
                exc.strerror or exc,
            )

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
                log.error(
                    "ledger: cannot write the spool in %s (%s); events kept in memory (%d waiting)",
                    self.folder,
                    exc.strerror or exc,
                    len(self._overflow),
                )
        else:
            log.critical(
                "ledger: spool unwritable and memory overflow full; event %s LOST", event_id_of(line)
            )

    def _append_after_close(self, line: bytes) -> None:
        """A call that ends after :meth:`close` (a thread still running at exit, or racing
        :func:`close_all`): the event gets a spool segment of its own, written whole under a
        name recovery ignores, then renamed, for the next process to recover."""
        path = self.folder / f"{os.getpid()}-{time.time_ns():x}{SEGMENT_SUFFIX}"
        fresh = path.with_suffix(".new")
        try:
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                write_all(fd, line)
            finally:
                os.close(fd)
            os.rename(fresh, path)
            log.warning("ledger: an event arrived after the ledger was closed; kept in %s for recovery", path)
        except OSError as exc:
            fresh.unlink(missing_ok=True)
            log.critical(
                "ledger: an event arrived after the ledger was closed and could not be spooled "
                "(%s); event %s LOST",
                exc.strerror or exc,
                event_id_of(line),
            )

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
        self._ckpt_fd = os.open(
            self.segment.with_suffix(".ckpt"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600
        )
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

    # -- flush and close -------------------------------------------------------------------

    def _save_overflow(self) -> None:
        """At close, put events still held in memory into the spool for the next process to
        write; one that still cannot be spooled is lost, and said so."""
        while self._overflow:
            line = self._overflow.popleft()
            try:
                write_all(self._fd, line)
                self._written += len(line)
            except OSError as exc:
                try:
                    os.ftruncate(self._fd, self._written)
                except OSError:
                    pass
                log.critical(
                    "ledger: closing with the database unavailable and the spool in %s unwritable "
                    "(%s); event %s LOST",
                    self.folder,
                    exc.strerror or exc,
                    event_id_of(line),
                )

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
