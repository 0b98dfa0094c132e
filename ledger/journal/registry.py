"""Registry: this process's journals, one per ledger and spool folder, shared by every client.

:func:`journal_for` makes a ledger's journal on first use: a :class:`~ledger.journal.sink.Journal`,
or a :class:`~ledger.journal.parent.ProcessJournal` when ``LEDGER_WRITER=process``
(:func:`writer_mode`). :func:`close_all` flushes and closes them all, and runs at interpreter exit.
A forked child drops the parent's journals without touching their files (they are the parent's) and
makes its own on first use.
"""

from __future__ import annotations

import atexit
import os
import threading

from ledger.config import ConfigError, spool_dir
from ledger.journal.parent import ProcessJournal
from ledger.journal.sink import Journal

__all__ = ["close_all", "journal_for"]


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
