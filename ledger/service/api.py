"""API: the JSON API under ``/api/v1``, described by ``/api/v1/openapi.json``.

Every endpoint takes a token (``Authorization: Bearer``) or a session cookie; changes (budgets,
rollups) take an admin. Money is always an exact decimal string of USD (``"12.500000000"``),
never a JSON number; counts are integers; instants are ISO 8601 UTC with ``Z``. Errors are RFC
9457 problems. A project the caller may not see is a 404, like one that does not exist.

* ``GET /spend?period=2026-11&tz=Europe/Berlin[&project=P]``: the spend report, exactly as
  ``cerebras-ledger report --format json`` prints it (totals, by day, model, project and top tags,
  the change against the previous period, unpriced usage).
* ``GET /overview``: every project with its figures, budget, forecast and open alerts.
* ``GET /events``: events newest first, filtered, paged by ``cursor``; ``GET /events.csv``
  streams every matching event as CSV.
* ``GET /budgets``, ``GET|PUT|DELETE /budgets/{project}``; ``GET /alerts``; ``GET /prices``.
* ``POST /rollup`` (admin): roll up what is pending now.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ledger.budgets.budgets import Budget, get_budget, remove_budget, set_budget
from ledger.budgets.spend import BudgetStatus
from ledger.calendar import Period, iso_z, month_of, parse_period, parse_zone
from ledger.config import check_project
from ledger.exports.eventfiles import COLUMNS
from ledger.money import Money
from ledger.outfile import csv_cell
from ledger.reports.formats import figure_value, public, to_dict
from ledger.service.app import admin_principal, api_principal
from ledger.service.auth import Principal
from ledger.service.problems import Problem
from ledger.service.queries import (
    STATUSES,
    EventFilter,
    alerts_for,
    budgets_for,
    delivery_state,
    event_filter,
    event_pages,
    events_page,
    known_project,
    overview,
    spend_report,
    unpriced_models,
)
from ledger.store import read_snapshot

__all__ = ["router", "scope_of_view"]

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}
_PROBLEMS = {
    400: "the request is malformed or a value is out of range (one line says which)",
    401: "no token, or one that is unknown, revoked or expired",
    403: "the token may not do this (an admin is needed)",
    404: "no such project or budget (or one the token may not see)",
    413: "the request body is too large",
    414: "the query string is too long",
    429: "too many failed logins from this address; see Retry-After",
}
router = APIRouter(
    prefix="/api/v1",
    tags=["ledger"],
    responses={
        code: {"description": text, "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}}}
        for code, text in _PROBLEMS.items()
    },
)
Viewer = Annotated[Principal, Depends(api_principal)]
Admin = Annotated[Principal, Depends(admin_principal)]
PeriodQ = Annotated[
    str | None, Query(max_length=16, description="2026-11-27, 2026-W48 or 2026-11; default this month")
]
ZoneQ = Annotated[str, Query(max_length=64, description="IANA time zone of the period's days")]
ProjectQ = Annotated[str | None, Query(max_length=200)]


def scope_of_view(period: str | None, tz: str, now: datetime | None = None) -> tuple[Period, Any]:
    """The period and zone a view asks for (this month in ``tz`` by default)."""
    zone = parse_zone(tz)
    now = now or datetime.now(UTC)
    return (parse_period(period) if period else month_of(now.astimezone(zone).date())), zone


def usd(nanos: int | None) -> str | None:
    return None if nanos is None else str(Money(int(nanos)))


def budget_json(budget: Budget, status: BudgetStatus | None) -> dict[str, Any]:
    return {
        "project": budget.project,
        "monthly_usd": None if budget.monthly is None else str(budget.monthly),
        "daily_usd": None if budget.daily is None else str(budget.daily),
        "thresholds": list(budget.thresholds),
        "timezone": budget.timezone,
        "free_only": budget.free_only,
        "hard": budget.hard,
        "updated_at": None if budget.updated_at is None else iso_z(budget.updated_at),
        "status": None
        if status is None
        else {
            "period": status.period,
            "budget_usd": usd(status.budget_nanos),
            "spent_usd": usd(status.spent_nanos),
            "remaining_usd": usd(status.remaining_nanos),
            "forecast_usd": usd(status.forecast_nanos),
        },
    }


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, _: Viewer) -> JSONResponse:
    return JSONResponse(api_document(request.app))


def api_document(app: Any) -> dict[str, Any]:
    """The OpenAPI document, as the service answers: FastAPI's own, with its default ``422``
    validation response dropped (validation errors are 400 problems here, documented with the
    rest)."""
    if app.openapi_schema is None:
        doc = app.openapi()
        for item in doc.get("paths", {}).values():
            for operation in item.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            doc.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema  # type: ignore[no-any-return]


@router.get("/spend", summary="Spend report for a period and zone")
def spend(
    request: Request, p: Viewer, period: PeriodQ = None, tz: ZoneQ = "UTC", project: ProjectQ = None
) -> dict[str, Any]:
    when, zone = scope_of_view(period, tz)
    return to_dict(spend_report(request.app.state.engine, p, when, zone, project))


@router.get("/overview", summary="Every project with its figures, budget, forecast and open alerts")
def overview_json(request: Request, p: Viewer, period: PeriodQ = None, tz: ZoneQ = "UTC") -> dict[str, Any]:
    when, zone = scope_of_view(period, tz)
    report, rows = overview(request.app.state.engine, p, when, zone)
    return {
        "period": when.label,
        "tz": report.tz,
        "projects": [
            {
                "project": row.project,
                **{public(k): _json_figure(k, v) for k, v in row.figures.items()},
                "budget": None if row.budget is None else budget_json(row.budget, row.status),
                "open_alerts": row.open_alerts,
            }
            for row in rows
        ],
    }


def _json_figure(name: str, value: int) -> Any:
    return figure_value(name, value) if name.endswith("_nanos") else int(value)


SinceQ = Annotated[str | None, Query(max_length=40, description="ISO instant; default the period's start")]
UntilQ = Annotated[str | None, Query(max_length=40, description="ISO instant; default the period's end")]
ModelQ = Annotated[str | None, Query(max_length=200)]
StatusQ = Annotated[str | None, Query(max_length=16, description=" | ".join(STATUSES))]
TagQ = Annotated[str | None, Query(max_length=301, description="key=value")]
CursorQ = Annotated[str | None, Query(max_length=400, description="next_cursor of the page before")]


def event_query(
    period: PeriodQ = None,
    tz: ZoneQ = "UTC",
    since: SinceQ = None,
    until: UntilQ = None,
    project: ProjectQ = None,
    model: ModelQ = None,
    status: StatusQ = None,
    tag: TagQ = None,
) -> EventFilter:
    """FastAPI dependency: the events an ``/events`` request asks for (both its forms)."""
    when, zone = scope_of_view(period, tz)
    return event_filter(
        when,
        zone,
        since=since or "",
        until=until or "",
        project=project or "",
        model=model or "",
        status=status or "",
        tag=tag or "",
    )


Events = Annotated[EventFilter, Depends(event_query)]


@router.get("/events", summary="Events, newest first, paged by cursor")
def events(
    request: Request,
    p: Viewer,
    f: Events,
    cursor: CursorQ = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    with request.app.state.engine.connect() as conn:
        page = events_page(conn, p, f, cursor, limit)
    return {"events": page.rows, "next_cursor": page.next_cursor}


@router.get("/events.csv", summary="Every matching event as CSV (streamed)", response_class=StreamingResponse)
def events_csv(request: Request, p: Viewer, f: Events) -> StreamingResponse:
    engine = request.app.state.engine
    if f.project is not None:
        with engine.connect() as conn:
            known_project(conn, p, f.project)
    return StreamingResponse(
        csv_lines(event_pages(engine, p, f)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="events.csv"'},
    )


def csv_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Events as CSV for people: every cell through the spreadsheet guard (a model name that
    begins with ``=`` is text, not a formula). ``events export`` writes the exact machine form."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(COLUMNS)
    for n, row in enumerate(rows, 1):
        writer.writerow([csv_cell(row[c], spreadsheet=True) for c in COLUMNS])
        if n % 500 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


@router.get("/budgets", summary="Budgets the caller sees, with where each stands")
def budgets(request: Request, p: Viewer) -> dict[str, Any]:
    with read_snapshot(request.app.state.engine) as conn:
        rows = budgets_for(conn, p, datetime.now(UTC))
    return {"budgets": [budget_json(b, s) for b, s in rows]}


@router.get("/budgets/{project}", summary="One project's budget")
def budget(request: Request, p: Viewer, project: str) -> dict[str, Any]:
    with read_snapshot(request.app.state.engine) as conn:
        known_project(conn, p, project)
        rows = [r for r in budgets_for(conn, p, datetime.now(UTC)) if r[0].project == project]
    if not rows:
        raise Problem(404, "this project has no budget")
    return budget_json(*rows[0])


class BudgetIn(BaseModel):
    """A budget to set. Amounts are decimal USD strings (never JSON numbers: money is exact)."""

    model_config = ConfigDict(extra="forbid")
    monthly: str | None = Field(default=None, max_length=40, examples=["250.00"])
    daily: str | None = Field(default=None, max_length=40)
    thresholds: list[int] = Field(default=[50, 80, 100], max_length=20)
    timezone: str = Field(default="UTC", max_length=64)
    free_only: bool = False
    hard: bool = False


@router.put("/budgets/{project}", summary="Set or replace a project's budget (admin)")
def put_budget(request: Request, _a: Admin, project: str, body: BudgetIn) -> dict[str, Any]:
    engine = request.app.state.engine
    saved = set_budget(
        engine,
        check_project(project),
        monthly=body.monthly,
        daily=body.daily,
        thresholds=body.thresholds,
        timezone=body.timezone,
        free_only=body.free_only,
        hard=body.hard,
    )
    with read_snapshot(engine) as conn:
        status = next(
            (s for b, s in budgets_for(conn, _a, datetime.now(UTC)) if b.project == saved.project), None
        )
    return budget_json(saved, status)


@router.delete("/budgets/{project}", summary="Remove a project's budget (admin)")
def delete_budget(request: Request, _a: Admin, project: str) -> dict[str, Any]:
    engine = request.app.state.engine
    with engine.connect() as conn:
        had = get_budget(conn, project) is not None
    if not had or not remove_budget(engine, project):
        raise Problem(404, "this project has no budget")
    return {"project": project, "removed": True}


@router.get("/alerts", summary="Alerts, newest first, with their delivery state")
def alerts(
    request: Request, p: Viewer, project: ProjectQ = None, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> dict[str, Any]:
    with request.app.state.engine.connect() as conn:
        records = alerts_for(conn, p, project, limit)
    return {
        "alerts": [
            {
                "alert_id": r.alert.alert_id,
                "project": r.alert.project,
                "rule": r.alert.rule,
                "period": r.alert.period,
                "threshold": r.alert.threshold,
                "created_at": iso_z(r.alert.created_at),
                "message": r.alert.message,
                "state": delivery_state(r),
                "attempts": r.attempts,
                "next_attempt_at": None if r.delivered_at else iso_z(r.next_attempt_at),
                "delivered_at": None if r.delivered_at is None else iso_z(r.delivered_at),
                "last_error": r.last_error,
            }
            for r in records
        ]
    }


@router.get("/prices", summary="Price books with their dated history, and unpriced models")
def prices(request: Request, p: Viewer) -> dict[str, Any]:
    from ledger.store import load_price_book

    with read_snapshot(request.app.state.engine) as conn:
        points = load_price_book(conn).points()
        unpriced = unpriced_models(conn, p)
    return {
        "prices": [
            {
                "book": pt.book,
                "model": pt.model,
                "effective_from": iso_z(pt.effective_from),
                "price_id": pt.price_id,
                "input_usd_per_token": str(pt.input),
                "cached_usd_per_token": None if pt.cached is None else str(pt.cached),
                "output_usd_per_token": str(pt.output),
                "free": pt.free,
                "source": pt.source,
            }
            for pt in points
        ],
        "unpriced": unpriced,
    }


@router.post("/rollup", summary="Roll up what is pending (admin)")
def rollup(request: Request, _a: Admin) -> dict[str, Any]:
    from ledger.store.rollup import rollup as run

    result = run(request.app.state.engine)
    return {"events": result.events, "batches": result.batches}
