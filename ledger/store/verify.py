"""Verify: check a ledger's integrity and say what is wrong, one finding a line.

Checks, each a SQL aggregate (nothing is loaded whole):

* ``rollup``: the rollups equal the events of every rolled-up batch, per project and model, in
  calls, tokens and nano-dollars; and no batch is left pending (a pending batch is reported).
  Read in one statement (one snapshot), so a rollup committing meanwhile is never a finding.
* ``pricing``: no event has a cost without ``priced``, or ``priced`` without a cost: an unpriced
  event is always flagged.
* ``spool``: the spool folder holds no segment of a dead process and no set-aside record.
* ``prices``: no two points of one book price one model (through its aliases) from one instant.
* ``corrections``: every correction points at an event that exists and is a usage event; and
  every corrected event adds up (charge plus corrections) to what its latest restatement's
  price point gives for its tokens, with its tokens netting to its own: a doubled correction
  set, or one lost half-way, is reported with the event ids.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal_column, or_, select, union_all

from ledger.pricing import model_names
from ledger.store.schema import EventRow, IngestBatchRow, PriceRow, UsageRollupRow

__all__ = ["Finding", "verify"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: which check found it and what it is."""

    check: str
    problem: str


def _rollup(conn: Connection) -> list[Finding]:
    # One statement, so one snapshot: the events of rolled-up batches, the rollup sums and the
    # pending batches are read as of the same instant. As separate statements, a rollup that
    # commits between them (a scheduler, another process) would show as a false mismatch on
    # PostgreSQL, where READ COMMITTED gives every statement its own snapshot.
    e, r, b = EventRow.__table__.c, UsageRollupRow.__table__.c, IngestBatchRow.__table__.c
    model = func.substr(func.coalesce(e.served_model, e.requested_model, ""), 1, 100)
    rolled = EventRow.__table__.join(IngestBatchRow.__table__, e.batch_id == b.batch_id)
    raw_q = (
        select(
            literal_column("'raw'").label("side"),
            e.project.label("project"),
            model.label("model"),
            func.sum(case((e.kind == "usage", 1), else_=0)).label("calls"),
            func.sum(e.total_tokens).label("tokens"),
            func.sum(e.cost_nanos).label("nanos"),
        )
        .select_from(rolled)
        .where(b.rolled_up.is_(True))
        .group_by(e.project, model)
    )
    sum_q = select(
        literal_column("'rollup'"),
        r.project,
        r.model,
        func.sum(case((r.kind == "usage", r.events), else_=0)),
        func.sum(r.total_tokens),
        func.sum(r.cost_nanos),
    ).group_by(r.project, r.model)
    blank: Any = literal_column("''")
    pending_q: Any = (
        select(
            literal_column("'pending'"), blank, blank, func.count(), literal_column("0"), literal_column("0")
        )
        .select_from(IngestBatchRow.__table__)
        .where(b.rolled_up.is_(False))
    )
    raw: dict[tuple[str, str], tuple[int, ...]] = {}
    summed: dict[tuple[str, str], tuple[int, ...]] = {}
    pending = 0
    for side, project, name, *figures in conn.execute(union_all(raw_q, sum_q, pending_q)):
        values = tuple(int(x or 0) for x in figures)
        if side == "pending":
            pending = values[0]
        else:
            (raw if side == "raw" else summed)[(project, name)] = values
    out = [
        Finding(
            "rollup",
            f"project {k[0]!r} model {k[1]!r}: events say (calls, tokens, nanos) = "
            f"{raw.get(k, (0, 0, 0))}, rollup says {summed.get(k, (0, 0, 0))}",
        )
        for k in sorted(set(raw) | set(summed))
        if raw.get(k, (0, 0, 0)) != summed.get(k, (0, 0, 0))
    ]
    if pending:
        out.append(
            Finding("rollup", f"{pending} ingest batch(es) not rolled up yet (run `cerebras-ledger rollup`)")
        )
    return out


def _pricing(conn: Connection) -> list[Finding]:
    e = EventRow.__table__.c
    cost_unflagged = conn.execute(
        select(func.count()).where(e.cost_nanos.is_not(None), e.priced.is_(False))
    ).scalar_one()
    flagged_no_cost = conn.execute(
        select(func.count()).where(e.cost_nanos.is_(None), e.priced.is_(True))
    ).scalar_one()
    out = []
    if cost_unflagged:
        out.append(Finding("pricing", f"{cost_unflagged} event(s) have a cost but priced=false"))
    if flagged_no_cost:
        out.append(Finding("pricing", f"{flagged_no_cost} event(s) have priced=true but no cost"))
    return out


def _spool(folder: Path | None) -> list[Finding]:
    if folder is None or not folder.is_dir():
        return []
    from ledger.journal import orphaned_segments

    out = [
        Finding("spool", f"{seg.name}: left by a dead process, not yet written to the database")
        for seg in orphaned_segments(folder)
    ]
    rejected = folder / "rejected.jsonl"
    if rejected.exists() and rejected.stat().st_size:
        lines = sum(1 for _ in rejected.open("rb"))
        out.append(
            Finding("spool", f"{rejected}: {lines} record(s) set aside, never written to the database")
        )
    return out


def _prices(conn: Connection) -> list[Finding]:
    p = PriceRow.__table__.c
    seen: Counter[tuple[str, str, object]] = Counter()
    for book, model, since in conn.execute(select(p.book, p.model, p.effective_from)):
        canonical = sorted(model_names(model))[0]
        seen[(book, canonical, since)] += 1
    return [
        Finding("prices", f"{n} points price {m!r} in book {b!r} from {t}: which applies is ambiguous")
        for (b, m, t), n in sorted(seen.items(), key=str)
        if n > 1
    ]


def _corrections(conn: Connection) -> list[Finding]:
    e = EventRow.__table__.c
    target = EventRow.__table__.alias("target")
    bad = conn.execute(
        select(func.count())
        .select_from(EventRow.__table__.outerjoin(target, target.c.event_id == e.corrects_event_id))
        .where(e.kind == "correction", (target.c.event_id.is_(None)) | (target.c.kind != "usage"))
    ).scalar_one()
    out = [Finding("corrections", f"{bad} correction(s) point at no usage event")] if bad else []
    return out + _corrected_costs(conn)


SHOWN = 5  # event ids named in a finding


def _corrected_costs(conn: Connection) -> list[Finding]:
    """Every corrected event must stand at its latest restatement: its tokens net to the event's
    own, and its cost (the charge plus every correction) is what the restatement's price point
    gives for those tokens. A doubled or lost correction set breaks this."""
    ra, pa = EventRow.__table__.alias("r"), PriceRow.__table__.alias("p")
    e, c, p, r = EventRow.__table__.c, EventRow.__table__.alias("c").c, pa.c, ra.c
    sums = (
        select(
            c.corrects_event_id.label("eid"),
            func.sum(c.cost_nanos).label("cost"),
            func.max(case((c.note == "restatement", c.correction_seq))).label("rseq"),
            *(func.coalesce(func.sum(getattr(c, t)), 0).label(t) for t in _TOKENS),
        )
        .where(c.kind == "correction")
        .group_by(c.corrects_event_id)
        .subquery()
    )
    rate_cached = func.coalesce(p.cached_nanos, p.input_nanos)
    expected = case(
        (p.free.is_(True), 0),
        else_=p.input_nanos * (e.prompt_tokens - e.cached_tokens)
        + rate_cached * e.cached_tokens
        + p.output_nanos * e.completion_tokens,
    )
    net = func.coalesce(e.cost_nanos, 0) + func.coalesce(sums.c.cost, 0)
    wrong = or_(
        r.event_id.is_(None),
        p.price_id.is_(None),
        e.usage_known.is_not(True),
        net != expected,
        *(getattr(sums.c, t) != 0 for t in _TOKENS),
    )
    query = (
        select(e.event_id, func.count().over().label("n"))
        .select_from(
            EventRow.__table__.join(sums, sums.c.eid == e.event_id)
            .outerjoin(ra, and_(r.corrects_event_id == e.event_id, r.correction_seq == sums.c.rseq))
            .outerjoin(pa, p.price_id == r.price_id)
        )
        .where(e.kind == "usage", wrong)
        .order_by(e.event_id)
        .limit(SHOWN)
    )
    found = conn.execute(query).all()
    if not found:
        return []
    n = int(found[0].n)
    named = ", ".join(r.event_id for r in found) + (", ..." if n > SHOWN else "")
    return [
        Finding(
            "corrections",
            f"{n} event(s) whose charge and corrections add up to a cost no "
            f"price point gives (a doubled or missing correction set): {named}",
        )
    ]


_TOKENS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "total_tokens")


def verify(conn: Connection, spool: Path | None = None) -> list[Finding]:
    """Every problem found; an empty list means the ledger is consistent."""
    return [*_rollup(conn), *_pricing(conn), *_spool(spool), *_prices(conn), *_corrections(conn)]
