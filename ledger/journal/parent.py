"""Parent: the calling process's side of the writer process (``LEDGER_WRITER=process``).

:class:`ProcessJournal` is a :class:`~ledger.journal.sink.Journal` whose live segment is drained by
a child process (:mod:`ledger.journal.process`, which this module starts and never imports): it
tells the child of each new segment and each flush, follows the child's checkpoint so
:meth:`~ledger.journal.sink.Journal.flush` and :meth:`~ledger.journal.sink.Journal.close` know
what is written, and takes the segment over in its own writer thread if the child cannot start or
dies.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ledger.journal.sink import Journal
from ledger.journal.spool import read_checkpoint_fd

if TYPE_CHECKING:
    import subprocess

__all__ = ["ProcessJournal"]

log = logging.getLogger("ledger.journal")  # the stage's one logger


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
        root = str(Path(__file__).resolve().parents[2])
        code = f"import sys; sys.path.append({root!r}); from ledger.journal.process import main; sys.exit(main())"
        try:
            return subprocess.Popen(
                [sys.executable, "-c", code, str(self.folder), str(self.segment)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                env=dict(os.environ, LEDGER_WRITER_URL=self.url),
            )
        except Exception as exc:  # noqa: BLE001 - no interpreter to run, no fork: the thread writes
            log.error(
                "ledger: cannot start the writer process (%s); writing from this process instead",
                getattr(exc, "strerror", None) or exc,
            )
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
        self._committed = max(self._committed, read_checkpoint_fd(self._ckpt_fd))
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
