"""FOCUS files: a billing month's rows as CSV or Parquet, and the whole file under a temporary name.

CSV: a header, then one line per row; NULL is an empty cell, decimals are plain decimal strings.
Parquet: ``decimal128`` decimals, UTC timestamps, a real null for NULL, and the schema metadata
key ``FocusVersion`` (the columns and values: :mod:`ledger.exports.focuscolumns`).

Spreadsheets (CSV injection). FOCUS CSV files are opened in spreadsheets as often as they are
loaded into FinOps tools, so a text cell that would begin with ``=``, ``+``, ``-``, ``@``, a tab or
a carriage return is written with a leading ``'`` (OWASP's advice; see
:func:`ledger.config.spreadsheet_cell`); decimals, dates and booleans never are. In practice no
cell of a billed row qualifies: project names (``SubAccountId``/``SubAccountName``) cannot begin
with those characters (:func:`ledger.config.check_project`), and the model-derived columns
(``x_Model``, ``SkuId``, ``SkuPriceId``, ``ChargeDescription``) only hold models that have a price
point or an imported cost. Parquet holds every value exactly, unchanged.
"""

from __future__ import annotations

import csv
import importlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from ledger.exports.focus import BillingError
from ledger.exports.focuscolumns import COLUMNS, DATE_COLUMNS, FOCUS_VERSION, SCALES
from ledger.outfile import OutFile, csv_cell

__all__ = ["pyarrow", "write_csv", "write_temp"]


def write_csv(rows: Iterable[dict[str, Any]], out: IO[str]) -> int:
    """FOCUS rows as CSV (header first; NULL is an empty cell). Returns the row count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    n = 0
    for row in rows:
        writer.writerow([csv_cell(row[c], spreadsheet=True) for c in COLUMNS])
        n += 1
    return n


def pyarrow() -> Any:
    try:
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise BillingError("parquet output needs pyarrow: pip install 'cerebras-ledger[parquet]'") from None


def parquet_schema() -> Any:
    pa, _ = pyarrow()
    fields = []
    for c in COLUMNS:
        if c in SCALES:
            kind = pa.decimal128(38, SCALES[c])
        elif c in DATE_COLUMNS:
            kind = pa.timestamp("ms", tz="UTC")
        elif c == "x_Free":
            kind = pa.bool_()
        else:
            kind = pa.string()
        fields.append(pa.field(c, kind, nullable=True))
    return pa.schema(fields, metadata={"FocusVersion": FOCUS_VERSION})  # FOCUS's metadata key, too


def write_parquet(rows: Sequence[dict[str, Any]], out: IO[bytes]) -> int:
    pa, pq = pyarrow()
    schema = parquet_schema()
    table = pa.Table.from_pylist(list(rows), schema=schema)
    pq.write_table(table, out)
    return len(rows)


def write_temp(rows: Sequence[dict[str, Any]], out: Path, fmt: str) -> OutFile:
    """The file written whole under a temporary name beside ``out``; the caller commits it
    (renames it into place) or discards it."""
    target = OutFile(out)
    try:
        if fmt == "csv":
            text = io.TextIOWrapper(target.file, encoding="utf-8", newline="")
            write_csv(rows, text)
            text.flush()
            text.detach()
        else:
            write_parquet(rows, target.file)
    except BaseException:
        target.discard()
        raise
    return target
