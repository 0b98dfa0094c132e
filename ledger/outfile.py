"""Output files the user names (every ``--out``): written whole or not at all, owner-only, and
never in place of something that is not a regular file.

:class:`OutFile` writes a temporary file beside the target (made by :func:`tempfile.mkstemp`,
so owner-only, 0600, without touching the process umask, which is not thread-safe), syncs it,
and renames it over the target with :func:`os.replace`. A target that exists and is not a
regular file (a device such as ``/dev/full``, a symlink, a FIFO, a socket, a folder) is refused
before anything is written, and again just before the rename, with one line
(:class:`OutFileError`): replacing ``/dev/null`` with a regular file, or a symlink with a copy,
is never what was meant.

:func:`csv_cell` is the one way a value becomes a CSV cell, in every CSV the ledger writes.

Imports only the standard library and the ledger's foundations.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from ledger.calendar import iso_z
from ledger.config import spreadsheet_cell

__all__ = ["OutFile", "OutFileError", "check_target", "csv_cell", "write_bytes"]


class OutFileError(ValueError):
    """An output file that cannot be written where it was asked for, said in one line."""


_KINDS = (
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def check_target(path: Path) -> None:
    """Refuse ``path`` if it exists and is not a regular file (looked at without following a
    symlink)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    if stat.S_ISREG(st.st_mode):
        return
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
    raise OutFileError(f"{path} is {kind}, not a regular file; refusing to replace it")


class OutFile:
    """A file being written for ``path``: :attr:`file` (binary), then :meth:`commit` (renamed
    into place) or :meth:`discard`. As a context manager it commits on success and discards on
    an exception."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        check_target(self.path)
        try:
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part")
        except OSError as exc:
            raise OutFileError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.tmp = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Sync the file and rename it over the target (checked again first)."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            check_target(self.path)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        try:  # the rename itself, durable too
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def discard(self) -> None:
        """Drop the temporary file; the target is untouched."""
        try:
            self.file.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> OutFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through an :class:`OutFile`."""
    with OutFile(path) as out:
        out.file.write(data)


def csv_cell(value: Any, *, spreadsheet: bool = False) -> str:
    """``value`` as the text of a CSV cell: ``None`` is empty, booleans are ``true``/``false``,
    instants ISO 8601 UTC to the second with ``Z``, decimals plain (never an exponent), mappings
    JSON with sorted keys, the rest ``str``. With ``spreadsheet`` (report and billing CSVs, meant
    to be opened in a spreadsheet) text that would be read as a formula gets OWASP's leading
    ``'`` (:func:`ledger.config.spreadsheet_cell`); machine formats (event files) stay exact."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso_z(value, "seconds")
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = str(value)
    return spreadsheet_cell(text) if spreadsheet else text
