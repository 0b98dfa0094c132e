"""Recovery: writing what dead processes left in the spool, exactly once.

Each live process holds an exclusive ``flock`` on its own segment, and the kernel releases a dead
process's. :func:`drain_segment` takes a segment's lock (``False`` if its owner lives), writes what
is past its checkpoint (a torn last record is set aside), and deletes it; :func:`drain_spool` does
so for every segment in a folder (the writer thread, every
:data:`~ledger.journal.thread.ORPHAN_SCAN_S`) and clears ``.new`` files a dead process left;
:func:`recover` does it once for a ledger (the CLI before each command, the API when it opens);
:func:`orphaned_segments` only lists dead owners' segments (``verify``). The lock makes recovery
exactly-once among processes; idempotent inserts make it so even if two take turns.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from ledger.config import spool_dir, spool_folder
from ledger.journal.spool import (
    READ_BYTES,
    SEGMENT_SUFFIX,
    Reject,
    open_own,
    read_checkpoint_fd,
    set_aside_long,
    split_lines,
    write_checkpoint,
)
from ledger.journal.writer import Sink, write_lines

__all__ = ["drain_segment", "drain_spool", "orphaned_segments", "recover"]

log = logging.getLogger("ledger.journal")  # the stage's one logger


def drain_segment(path: Path, sink: Sink, reject: Reject) -> bool:
    """Write what a dead process left in ``path`` and delete it. ``False`` if its owner lives.
    A segment that is not this user's alone (another owner, writable by others, a symlink) is
    never ingested: it is logged and left in place."""
    try:
        fd = open_own(path, os.O_RDWR)
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
            own_ckpt = open_own(ckpt, os.O_RDONLY)
        except FileNotFoundError:
            own_ckpt = None
        if own_ckpt is not None:
            offset = read_checkpoint_fd(own_ckpt)
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
                lines, used = split_lines(data)
                if not used:
                    if len(data) < READ_BYTES:  # the owner died mid-line: a torn record
                        reject.keep(data, "torn last record in a dead process's spool")
                        offset += len(data)
                    else:
                        offset = (
                            set_aside_long(fd, offset, os.fstat(fd).st_size, reject, final=True) or offset
                        )
                    write_checkpoint(ckpt_fd, offset)
                    continue
                write_lines(sink, reject, lines)
                offset += used
                write_checkpoint(ckpt_fd, offset)
        finally:
            os.close(ckpt_fd)
        path.unlink(missing_ok=True)
        ckpt.unlink(missing_ok=True)
        log.info("ledger: recovered spool segment %s", path.name)
        return True
    finally:
        os.close(fd)


def drain_spool(folder: Path, sink: Sink, reject: Reject, skip: Path | None = None) -> int:
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
            fd = open_own(path, os.O_RDONLY)
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
        fd = open_own(path, os.O_RDONLY)
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


def recover(url: str, folder: str | os.PathLike[str] | None = None) -> int:
    """Write every dead process's spool for ``url`` now (the CLI does this before each command).
    Returns how many segments were left because their owners are alive."""
    path = spool_dir(url, folder)
    if not path.is_dir():
        return 0
    spool_folder(path, create=False)  # ours alone, or refused
    sink = Sink(url)
    try:
        return drain_spool(path, sink, Reject(path))
    finally:
        sink.dispose()
