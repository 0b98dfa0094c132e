"""Writer process: drains one calling process's live spool segment into the database.

With ``LEDGER_WRITER=process`` a :class:`~ledger.journal.ProcessJournal` starts this as
``python -m ledger.journal.process FOLDER SEGMENT`` (the database URL in ``LEDGER_WRITER_URL``, never on
the command line, where other users could read a password) instead of a writer thread, so the database work
(decode, price, insert: 50-100 µs of CPU an event) never holds the calling process's GIL.

It reads the segment from its checkpoint to the last complete line, writes it in batches (the
same :func:`~ledger.journal.writer.write_lines` as the thread), records each batch in the checkpoint
file, then waits :data:`~ledger.journal.thread.LINGER_S` or until its standard input says more:

* ``h`` line: hurry (the parent is flushing): drain now.
* ``s PATH`` line: the parent rotated to a new segment (the old one is fully written).
* end of input: the parent closed the ledger or died. Drain what is left and exit. If the
  parent died, its segment lock is free: the segment is then recovered (drained and removed)
  as any dead process's segment is.

Database errors are retried with back-off, as in the thread; problems are logged to standard
error (inherited from the parent). This module imports SQLAlchemy only through the journal's
sink, and is never imported by the calling process.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from ledger.config import describe, log_to_stderr, redact, redact_url, remember_secrets
from ledger.journal.recovery import drain_segment
from ledger.journal.spool import (
    READ_BYTES,
    Reject,
    read_checkpoint,
    set_aside_long,
    split_lines,
    write_checkpoint,
)
from ledger.journal.thread import BATCH_EVENTS, LINGER_S
from ledger.journal.writer import Sink, write_lines

log = logging.getLogger("ledger.writer")


class _Segment:
    """The live segment as this process reads it: its checkpoint and how far it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.ckpt_fd = os.open(path.with_suffix(".ckpt"), os.O_RDWR | os.O_CREAT, 0o600)
        self.offset = read_checkpoint(path.with_suffix(".ckpt"))

    def drain(self, sink: Sink, reject: Reject, wrote: Callable[[], None]) -> None:
        """Write every complete line past the checkpoint (the size now is the round's end);
        ``wrote`` is called after each batch reaches the database, before the checkpoint moves."""
        end = os.fstat(self.fd).st_size
        while self.offset < end:
            data = os.pread(self.fd, min(READ_BYTES, end - self.offset), self.offset)
            lines, used = split_lines(data)
            if not used:
                if len(data) < READ_BYTES:
                    return  # a line being written: the next round takes it
                # longer than a read (never a line the call path spools): set aside, go on
                after = set_aside_long(self.fd, self.offset, end, reject, final=False)
                if after is None:
                    return  # its end is not written yet
                self.offset = after
                write_checkpoint(self.ckpt_fd, self.offset)
                continue
            lines = lines[:BATCH_EVENTS]
            used = sum(len(x) + 1 for x in lines)
            write_lines(sink, reject, lines, trusted=True)  # the parent's own lines
            wrote()
            self.offset += used
            write_checkpoint(self.ckpt_fd, self.offset)

    def close(self) -> None:
        os.close(self.ckpt_fd)
        os.close(self.fd)


def _commands(fd: int, timeout: float) -> list[bytes] | None:
    """Lines the parent sent within ``timeout``; ``None`` at end of input."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return []
    data = os.read(fd, 65536)
    if not data:
        return None
    return data.splitlines()


def run(url: str, folder: Path, segment: Path) -> int:
    remember_secrets(url)
    sink = Sink(url)
    reject = Reject(folder)
    seg = _Segment(segment)
    problem: str | None = None
    backoff = 0.1
    open_input = True

    def back() -> None:  # logged before the checkpoint moves: a flush that returns has it said
        nonlocal problem
        if problem:
            log.warning("ledger writer: database %s is back", redact_url(url))
            problem = None

    try:
        while True:
            try:
                seg.drain(sink, reject, back)
                back()
                sink.refresh_stops(folder)
                backoff = 0.1
                wait = LINGER_S
            except Exception as exc:  # noqa: BLE001 - the writer must never die on a database problem
                what = redact(describe(exc), url)
                if what != problem:
                    log.error(
                        "ledger writer: cannot write to %s (%s); events wait in %s",
                        redact_url(url),
                        what,
                        folder,
                    )
                    problem = what
                sink.dispose()
                if not open_input:
                    return 1  # closing with the database away: the segment stays for recovery
                wait, backoff = backoff, min(backoff * 2, 5.0)
            if not open_input:
                break
            commands = _commands(0, wait)
            if commands is None:
                open_input = False  # closed or dead parent: one last round
                continue
            for cmd in commands:
                if cmd.startswith(b"s "):
                    seg.close()
                    seg = _Segment(Path(os.fsdecode(cmd[2:])))
    finally:
        seg.close()
    # A dead parent's lock is free: recover its segment like any orphan (drained, removed).
    drain_segment(seg.path, sink, reject)
    sink.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = os.environ.get("LEDGER_WRITER_URL", "")
    if len(args) != 2 or not url:
        print(
            "usage: LEDGER_WRITER_URL=... python -m ledger.journal.process FOLDER SEGMENT (the ledger starts it)",
            file=sys.stderr,
        )
        return 2
    log_to_stderr(logging.WARNING)
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when to stop
    # (it closes our input); dying mid-batch here would only hand the work back to it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    folder, segment = args
    return run(url, Path(folder), Path(segment))


if __name__ == "__main__":
    sys.exit(main())
