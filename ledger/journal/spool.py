"""Spool: the files in the spool folder, and the one way each is read and written.

A *segment* (``<pid>-<ns>.seg``) is one process's append-only file of spool records, one line each;
its *checkpoint* (the ``.ckpt`` beside it) says how many of its bytes are known to be in the
database. This module owns the conventions every part of the journal shares: writing whole lines
(:func:`write_all`), cutting a read into complete lines (:func:`split_lines`), reading and writing
checkpoints, opening a file only if it is a regular file of this user's alone (:func:`open_own`,
said once per file otherwise, and the file left in place), and ``rejected.jsonl``
(:class:`Reject`): where a record that can never be written is set aside, kept, not lost, one too
long to read whole included (:func:`set_aside_long`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ledger.config import owned_by_us

__all__ = [
    "READ_BYTES",
    "Backlog",
    "backlog",
    "SEGMENT_SUFFIX",
    "Reject",
    "open_own",
    "read_checkpoint",
    "read_checkpoint_fd",
    "set_aside_long",
    "split_lines",
    "write_all",
    "write_checkpoint",
]

log = logging.getLogger("ledger.journal")  # the stage's one logger

SEGMENT_SUFFIX = ".seg"
READ_BYTES = 1024 * 1024


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError("short write to spool")
        view = view[n:]


class Reject:
    """Lines that can never be written (corrupt or refused by the database), kept, not lost."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "rejected.jsonl"

    def _open(self) -> int:
        """``rejected.jsonl`` for appending; if that name is not a regular file of ours alone (a
        symlink, a FIFO, another owner's), a fresh file beside it, so setting a record aside
        never blocks the writer."""
        try:
            fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600
            )
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and owned_by_us(st):
                return fd
            os.close(fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO):
                raise
        alt = self.path.with_name(f"rejected-{os.getpid()}-{time.time_ns():x}.jsonl")
        log.error(
            "ledger: %s is not a file of ours alone; setting records aside in %s instead", self.path, alt
        )
        return os.open(alt, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)

    def keep(self, line: bytes, why: str) -> None:
        log.error("ledger: set aside a spool record in %s: %s", self.path, why)
        fd = self._open()
        try:
            write_all(fd, line if line.endswith(b"\n") else line + b"\n")
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
                write_all(fd, piece)
                at, last = at + len(piece), piece
            if not last.endswith(b"\n"):
                write_all(fd, b"\n")
        finally:
            os.close(fd)


def set_aside_long(fd: int, start: int, end: int, reject: Reject, *, final: bool) -> int | None:
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


def split_lines(data: bytes) -> tuple[list[bytes], int]:
    """Complete lines in ``data`` and how many bytes they span."""
    end = data.rfind(b"\n") + 1
    return (data[:end].splitlines() if end else []), end


def read_checkpoint(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def write_checkpoint(fd: int, offset: int) -> None:
    os.pwrite(fd, f"{offset:020d}\n".encode(), 0)


def read_checkpoint_fd(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).strip() or 0)
    except (OSError, ValueError):
        return 0


_foreign_said: set[str] = set()


def _foreign(path: Path, why: str) -> None:
    """Say once per process that a file in the spool folder is not ours alone, and is ignored."""
    if str(path) not in _foreign_said:
        _foreign_said.add(str(path))
        log.error(
            "ledger: %s in the spool folder %s is %s; not ingested, left in place",
            path.name,
            path.parent,
            why,
        )


def open_own(path: Path, flags: int) -> int | None:
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
    _foreign(
        path,
        "not a regular file"
        if not stat.S_ISREG(st.st_mode)
        else f"owned by uid {st.st_uid}"
        if st.st_uid != os.geteuid()
        else f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})",
    )
    return None


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits in a spool folder: bytes past their checkpoints, and for how long the writer
    has not moved a checkpoint while bytes waited (seconds; 0 when nothing waits)."""

    segments: int
    waiting_bytes: int
    lag_seconds: float


def backlog(folder: Path, now: float | None = None) -> Backlog:
    """The :class:`Backlog` of ``folder``, read from file sizes and checkpoints only (no locks,
    nothing opened for writing: safe beside a running writer). A missing folder waits for nothing."""
    now = time.time() if now is None else now
    segments = waiting = 0
    lag = 0.0
    try:
        paths = sorted(folder.glob(f"*{SEGMENT_SUFFIX}"))
    except OSError:
        paths = []
    for path in paths:
        try:
            st = path.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        ckpt = path.with_suffix(".ckpt")
        done = read_checkpoint(ckpt)
        segments += 1
        if st.st_size > done:
            waiting += st.st_size - done
            try:
                since = ckpt.stat().st_mtime
            except OSError:
                since = st.st_ctime
            lag = max(lag, now - since)
    return Backlog(segments, waiting, max(0.0, lag))
