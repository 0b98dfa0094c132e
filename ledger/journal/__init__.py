"""Journal stage: durable write. Every event goes to a local spool file first, the database second.

Owns spooling every event the call path records to an owner-only local file before anything else
(:mod:`~ledger.journal.sink`: the :class:`Journal` the call path appends to; :mod:`~ledger.journal.spool`:
the files; :mod:`~ledger.journal.codec`: the record), recovery after a crash
(:mod:`~ledger.journal.recovery`), and the writer that moves spooled events into the store: a thread
(:mod:`~ledger.journal.thread`) or, with ``LEDGER_WRITER=process``, a child process
(:mod:`~ledger.journal.parent` starts :mod:`~ledger.journal.process`), both through
:mod:`~ledger.journal.writer`, the journal's hand-off to the store stage.
:mod:`~ledger.journal.registry` keeps one journal per process and ledger.

Must not import pandas or Alembic; SQLAlchemy and :mod:`ledger.store` only lazily (in function
scope) in the writer, never on the call path; :mod:`ledger.budgets.stops` likewise, only in the
writer; never budgets (otherwise), reports, exports or the CLI.

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
  so every line fits one read; a line still longer than :data:`~ledger.journal.sink.MAX_LINE` is
  set aside in ``rejected.jsonl`` instead of spooled, and a record too long to read already in a
  segment (another version, a bug) is set aside whole. The writer thread, the writer process and
  recovery all go on past it.
* The folder must be this user's (:func:`ledger.config.spool_folder`: another owner's is
  refused, one open to others made 0700), and a segment or checkpoint that is not a regular file
  of ours alone (another owner, writable by others, a symlink) is never ingested: logged once
  and left in place.

:class:`ProcessJournal` (``LEDGER_WRITER=process``) is the same journal with the live segment
drained by a child process (:mod:`ledger.journal.process`) instead of the thread.
"""

from ledger.journal.parent import ProcessJournal
from ledger.journal.recovery import drain_spool, orphaned_segments, recover
from ledger.journal.registry import close_all, journal_for
from ledger.journal.sink import Journal, check_url
from ledger.journal.spool import SEGMENT_SUFFIX

__all__ = [
    "Journal",
    "ProcessJournal",
    "SEGMENT_SUFFIX",
    "check_url",
    "close_all",
    "drain_spool",
    "journal_for",
    "orphaned_segments",
    "recover",
]
