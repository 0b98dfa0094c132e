"""Writer thread: the background thread that drains a journal's spool into the store.

:class:`WriterThread` is the writer-thread half of :class:`~ledger.journal.sink.Journal` (a mixin:
the journal holds the state and starts the thread, this is the thread's loop). Each round it
recovers dead processes' segments (every :data:`ORPHAN_SCAN_S`), writes events kept in memory while
the spool was unwritable, writes the live segment from its checkpoint to where it ended when the
round began (batches of at most :data:`BATCH_EVENTS`), lets the journal rotate a drained segment,
and refreshes the hard-budget stop file; then it lingers :data:`LINGER_S`, which
:meth:`~ledger.journal.sink.Journal.flush` cuts short. Database problems are logged once each and
retried with back-off, never raised: the writer must never die.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from ledger.config import ConfigError, describe, redact, redact_url
from ledger.journal.recovery import drain_spool
from ledger.journal.spool import READ_BYTES, Reject, set_aside_long, split_lines, write_checkpoint
from ledger.journal.writer import Sink, write_lines

__all__ = ["BATCH_EVENTS", "LINGER_S", "WriterThread"]

log = logging.getLogger("ledger.journal")  # the stage's one logger

BATCH_EVENTS = 2000
# A busy writer waits this long between rounds, so it commits hundreds of events at a time
# instead of a few: the database sees each event within a quarter second, and the writer's
# per-batch cost (transaction, ingest batch row, checkpoint: about 0.7 ms of CPU on SQLite and
# 2 ms on PostgreSQL) is spread thin. flush() cuts the wait short.
LINGER_S = 0.25
ORPHAN_SCAN_S = 30.0


class WriterThread:
    """The writer thread's loop over a :class:`~ledger.journal.sink.Journal`'s state."""

    # The journal's state, set by Journal.__init__ and its segment methods.
    url: str
    folder: Path
    segment: Path
    _sink: Sink
    _reject: Reject
    _lock: threading.Lock
    _cond: threading.Condition
    _wake: threading.Event
    _hurry: threading.Event
    _stop: bool
    _overflow: deque[bytes]
    _written: int
    _committed: int
    _problem: str | None
    _ckpt_problem: bool
    _closed: bool
    _writer_done: bool
    _rfd: int
    _ckpt_fd: int

    if TYPE_CHECKING:  # the journal's own (ledger.journal.sink.Journal)

        def pending(self) -> int: ...
        def _close_segment(self, remove: bool) -> None: ...
        def _rotate_if_due(self) -> None: ...

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
            except Exception as exc:  # noqa: BLE001 - the writer must never die
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
            log.error(
                "ledger: cannot write to %s (%s); events wait in %s", redact_url(self.url), what, self.folder
            )
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
            write_lines(self._sink, self._reject, batch)
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
        lines, used = split_lines(data)
        if used:
            lines = lines[:BATCH_EVENTS]
            used = sum(len(x) + 1 for x in lines)
            write_lines(self._sink, self._reject, lines, trusted=True)  # our own, just written
            self._back()
            self._committed += used
        else:  # a record longer than a read (not one the call path spools): set aside, go on
            self._committed = set_aside_long(self._rfd, self._committed, end, self._reject, final=True) or end
        try:
            write_checkpoint(self._ckpt_fd, self._committed)
            self._ckpt_problem = False
        except OSError as exc:
            # The batch is in the database; a stale checkpoint only makes a recovery after a
            # crash replay it, which inserts nothing twice. A spool problem, not a database one.
            if not self._ckpt_problem:
                log.warning(
                    "ledger: cannot write the spool checkpoint in %s (%s); a recovery after "
                    "a crash would replay events already written",
                    self.folder,
                    exc.strerror or exc,
                )
                self._ckpt_problem = True

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()
