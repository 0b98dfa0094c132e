"""Event files, the import side: ``events import`` of a CSV or JSON Lines file, every row checked
before any is written (the columns, and the export that writes them: :mod:`ledger.exports.eventfiles`).

Import reads the same columns. Every row is checked before anything is written, and all rows
go in one transaction: a bad row fails the whole file with its line number, and nothing is
half-imported. It is idempotent by ``event_id`` (a UUID). A row with a ``cost_usd`` keeps it
(usage billed elsewhere, back-filled as is; re-pricing leaves it alone unless asked); a row
without one is priced from the price book in force at its ``occurred_at``. Imported rows use the
route's own book (``lava`` for ``lava``): a file cannot say whether a Lava call used your own
provider key.

**Import keeps exactly what it is given, or refuses the file** (``line N: why``): JSON numbers
are read as ``Decimal`` (:func:`load_json`; never float, no NaN or Infinity, no key twice);
integers and amounts are ASCII digits; a ``free=true`` row costs 0; ``occurred_at`` has a zone
and lies in [:data:`EARLIEST`, :data:`LATEST`), so every report, rollup and billing month can
cover it; nesting too deep for the parser, and a CSV field over the csv module's limit, are
line-numbered errors; a UTF-8 BOM is skipped; ``model`` may be empty (a request that named
none), so every exported event imports.
"""

from __future__ import annotations

import csv
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from ledger.calendar import iso_z
from ledger.config import ConfigError, Progress, check_project, first_line
from ledger.events import MAX_TOKENS, ROUTES, STATUSES, CallEvent, Usage
from ledger.exports.eventfiles import COLUMNS, TOKEN_COLUMNS
from ledger.money import Money, MoneyError, usd
from ledger.pricing import Charge, PriceBook, charge
from ledger.store.schema import EventRow

__all__ = ["ImportError_", "ImportResult", "import_file", "parse_file"]


class ImportError_(ValueError):  # noqa: N801 - "ImportError" is a builtin
    """A bad import file, said in one line naming the line number."""


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One checked row of an import file."""

    line: int
    event: CallEvent
    cost: Money | None
    free: bool
    priced: bool


@dataclass(frozen=True, slots=True)
class ImportResult:
    rows: int
    inserted: int


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


_DIGITS = re.compile(r"[0-9]{1,30}", re.ASCII)
_PAD = " \t"  # what may surround a cell's value (a spreadsheet's padding), nothing more


def _int(value: Any, name: str, lo: int = 0, hi: int = MAX_TOKENS) -> int | None:
    """A whole number: a JSON integer, or ASCII digits (no sign, ``_``, or other scripts' digits)."""
    if _blank(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip(_PAD)):
        n = int(value.strip(_PAD))
    else:
        raise ValueError(f"{name} must be a whole number in ASCII digits, got {str(value)[:40]!r}")
    if not lo <= n <= hi:
        raise ValueError(f"{name} {n} is out of range")
    return n


def _text(value: Any, name: str, limit: int = 200, required: bool = False) -> str | None:
    if _blank(value):
        if required:
            raise ValueError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text")
    if len(value) > limit or "\x00" in value:
        raise ValueError(f"{name} is longer than {limit} characters or holds NUL")
    return value


# Money in a cell: ASCII digits, an optional sign, point and exponent (what Decimal reads, less
# "_", other scripts' digits, NaN and Infinity).
_AMOUNT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?", re.ASCII)

# The instants an import accepts: months billing can export (from 2000) inside the years
# reports cover (to 9998), less a month at the end, so that every local day, ISO week and month
# of such an instant, in any time zone, is a period ``report`` can cover (and rollups, billing
# and summaries never leave what a datetime holds).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 12, 1, tzinfo=UTC)  # exclusive


def _cost(value: Any) -> Money | None:
    if _blank(value):
        return None
    if isinstance(value, str):
        if not _AMOUNT.fullmatch(value.strip(_PAD)):
            raise ValueError(f"cost_usd must be a decimal amount in ASCII digits, got {value[:40]!r}")
        return usd(value.strip(_PAD))
    if isinstance(value, Decimal) or (isinstance(value, int) and not isinstance(value, bool)):
        return usd(value)  # a JSON number, read as a decimal (see _json_line)
    raise ValueError(f"cost_usd must be a decimal amount, got {type(value).__name__}")


def _occurred_at(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("occurred_at must be an ISO 8601 timestamp with a time zone")
    stamp = value.strip(_PAD)
    try:
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError("occurred_at needs a time zone (use Z for UTC)")
        when = when.astimezone(UTC)
    except OverflowError:
        when = EARLIEST - timedelta(days=1)  # beyond year 1 or 9999 once in UTC: out of range below
    except ValueError as exc:
        if "time zone" in str(exc):
            raise
        raise ValueError(f"occurred_at {stamp[:40]!r} is not an ISO 8601 timestamp") from None
    if not EARLIEST <= when < LATEST:
        raise ValueError(f"occurred_at {stamp[:40]!r} is outside {iso_z(EARLIEST)} .. {iso_z(LATEST)}")
    return when


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k[:40]!r} appears twice in one object")
        out[k] = v
    return out


def load_json(text: str) -> Any:
    """JSON as the ledger reads it: numbers with a fraction or exponent as ``Decimal`` (never
    float), no NaN or Infinity, no key twice in an object. Raises ``ValueError`` (too deep a
    nesting too, which Python's parser reports as ``RecursionError``)."""
    try:
        return json.loads(
            text, parse_float=Decimal, parse_constant=_no_constant, object_pairs_hook=_unique_keys
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.IGNORECASE)


def _event_id(value: Any) -> str:
    """A UUID as 8-4-4-4-12 ASCII hex digits (any case; kept lower-case, as exported)."""
    if not isinstance(value, str) or not _UUID.fullmatch(value.strip(_PAD)):
        raise ValueError(f"event_id must be a UUID (8-4-4-4-12 hex digits), got {str(value)[:40]!r}")
    return str(uuid.UUID(value.strip(_PAD)))


def _tag_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"  # as JSON wrote it
    if isinstance(v, (dict, list)) or v is None:
        raise ValueError("tag values must be text, numbers or booleans")
    return str(v)  # text, or a number as written (Decimal / int)


def _tags(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        try:
            value = load_json(value) if value.strip() else {}
        except ValueError as exc:
            raise ValueError(f"tags: {str(exc)[:100]}") from None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError("tags must be a JSON object")
    return {str(k): _tag_value(v) for k, v in value.items()}


def check_row(raw: dict[str, Any], line: int) -> ImportRow:
    """Turn one raw row (CSV strings or JSON values) into a checked :class:`ImportRow`."""
    try:
        missing = [c for c in COLUMNS if c not in raw]
        if missing:
            raise ValueError(f"missing column(s): {', '.join(missing)}")
        event_id = _event_id(raw["event_id"])
        when = _occurred_at(raw["occurred_at"])
        project = check_project(raw["project"])
        route = raw["route"]
        if route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}")
        status = raw["status"]
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        model = _text(raw["model"], "model")  # none for a request that named no model
        counts = {c: _int(raw[c], c) for c in TOKEN_COLUMNS}
        usage: Usage | None = None
        if any(v is not None for v in counts.values()):
            if any(v is None for v in counts.values()):
                raise ValueError("token counts must be all given or all empty")
            u = Usage(**{k: int(v) for k, v in counts.items() if v is not None})
            if u.total_tokens != u.prompt_tokens + u.completion_tokens:
                raise ValueError("total_tokens must equal prompt_tokens + completion_tokens")
            if u.cached_tokens > u.prompt_tokens or u.reasoning_tokens > u.completion_tokens:
                raise ValueError("cached/reasoning tokens exceed prompt/completion tokens")
            usage = u
        cost = _cost(raw["cost_usd"])
        free, priced = _bool(raw["free"], "free"), _bool(raw["priced"], "priced")
        if cost is not None and not priced:
            raise ValueError("a row with cost_usd must have priced=true")
        if free and cost is not None and cost.nanos != 0:
            raise ValueError(f"a row with free=true must cost 0, not cost_usd {cost}")
        tags = _tags(raw["tags"])
        event = CallEvent(
            event_id=event_id,
            occurred_at=when.astimezone(UTC),
            project=project,
            route=route,
            book=route,
            requested_model=model,
            served_model=model,
            status=status,
            http_status=_int(raw["http_status"], "http_status", 0, 999),  # any 3-digit status a response had
            error_type=None,
            error_code=None,
            stream=_bool(raw["stream"], "stream"),
            usage=usage,
            latency_us=None,
            ttft_us=None,
            time_info=None,
            upstream_id=_text(raw["upstream_id"], "upstream_id"),
            lava_request_id=None,
            tags=tuple(sorted(tags.items())),
            source="import",
        )
        return ImportRow(line, event, cost, free, priced)
    except (ValueError, TypeError, MoneyError, ConfigError) as exc:
        raise ImportError_(f"line {line}: {first_line(exc, None) or type(exc).__name__}") from None


def _raw_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        handle = path.open(encoding="utf-8-sig", newline="")  # a BOM (as Excel writes) is skipped
    except OSError as exc:
        raise ImportError_(f"cannot read {path}: {exc.strerror}") from None
    read = [0]  # physical lines taken from the file: where a CSV parse error is

    def counted(lines: Iterable[str]) -> Iterator[str]:
        for text in lines:
            read[0] += 1
            yield text

    with handle:
        try:
            if fmt == "csv":
                reader = csv.DictReader(counted(handle))
                if reader.fieldnames is None or list(reader.fieldnames) != list(COLUMNS):
                    raise ImportError_(f"line 1: the header must be exactly: {','.join(COLUMNS)}")
                for row in reader:
                    if None in row.values():
                        raise ImportError_(f"line {reader.line_num}: fewer cells than columns")
                    if None in row:
                        raise ImportError_(f"line {reader.line_num}: more cells than columns")
                    yield reader.line_num, row
            else:
                for n, text in enumerate(handle, start=1):
                    if not text.strip():
                        continue
                    try:
                        row = load_json(text)
                    except ValueError as exc:
                        why = (
                            str(exc)
                            if "nested" in str(exc)
                            or "appears twice" in str(exc)
                            or "not a number" in str(exc)
                            else "not valid JSON"
                        )
                        raise ImportError_(f"line {n}: {why}") from None
                    if not isinstance(row, dict):
                        raise ImportError_(f"line {n}: not a JSON object")
                    yield n, row
        except UnicodeDecodeError:
            with path.open("rb") as raw:
                line = next((n for n, b in enumerate(raw, start=1) if not _utf8(b)), 1)
            raise ImportError_(f"line {line}: not UTF-8 text") from None
        except csv.Error as exc:
            raise ImportError_(f"line {max(read[0], 1)}: malformed CSV: {exc}") from None


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def detect_format(path: Path) -> str:
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if path.suffix.lower() == ".csv":
        return "csv"
    with path.open("rb") as fh:
        head = fh.read(64).removeprefix(b"\xef\xbb\xbf").lstrip()
    return "jsonl" if head.startswith(b"{") else "csv"


def parse_file(path: Path, fmt: str | None = None) -> Iterator[ImportRow]:
    """Checked rows of an import file, in order; raises :class:`ImportError_` at the first bad one."""
    seen: set[str] = set()
    for line, raw in _raw_rows(path, fmt or detect_format(path)):
        row = check_row(raw, line)
        if row.event.event_id in seen:
            raise ImportError_(f"line {line}: event_id {row.event.event_id} appears twice in the file")
        seen.add(row.event.event_id)
        yield row


def row_charge(row: ImportRow, book: PriceBook) -> Charge:
    if row.cost is not None:
        return Charge(None, row.cost, row.free, True)
    return charge(row.event, book)


def import_file(
    engine: Engine, path: Path, fmt: str | None = None, progress: Progress | None = None, batch: int = 1000
) -> ImportResult:
    """Check every row of ``path``, then insert them all in one transaction.

    ``progress`` (optional) is called with the rows of each written chunk.
    """
    from ledger import store

    total = sum(1 for _ in parse_file(path, fmt))  # pass 1: check everything, write nothing
    inserted = 0
    now = datetime.now(UTC)
    with store.write_transaction(engine) as conn:
        book = store.load_price_book(conn)
        chunk: list[ImportRow] = []

        def flush() -> int:
            ids = [r.event.event_id for r in chunk]
            have = set(conn.execute(select(EventRow.event_id).where(EventRow.event_id.in_(ids))).scalars())
            store.insert_events(
                conn, [store.event_row(r.event, row_charge(r, book), now) for r in chunk], "import"
            )
            return len(ids) - len(have)

        for row in parse_file(path, fmt):  # pass 2: the same rows, now written
            chunk.append(row)
            if len(chunk) >= batch:
                inserted += flush()
                if progress:
                    progress(len(chunk))
                chunk = []
        if chunk:
            inserted += flush()
            if progress:
                progress(len(chunk))
    return ImportResult(total, inserted)
