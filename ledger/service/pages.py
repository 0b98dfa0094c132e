"""Pages: the live dashboard's read-only views, server-rendered HTML with no script at all.

``/`` (every project this period: paid spend, free usage at list price, calls, errors, its
budget's burn against the month-end forecast, open alerts), ``/projects/{project}`` (the static
report's view and charts for one project), ``/alerts``, ``/prices``, ``/events`` (filters, a
cursor "Next" link and a CSV download through ``/api/v1/events.csv``) and the stylesheet
``/static/dashboard.css`` (the only thing here that answers without a session). The budget
forms, login and logout are in :mod:`ledger.service.forms`, whose routes this router includes.

Every view reads through :mod:`ledger.service.queries`, exactly as the JSON API does, so a
viewer token sees only its projects here too, and the figures match the API's to the nano-dollar.
The project view reuses :mod:`ledger.reports.html`'s view (cards, tables, chart geometry) and
draws it with the report's own chart macros.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from ledger.calendar import iso_z
from ledger.config import ConfigError
from ledger.reports import html as report_html
from ledger.service import forms
from ledger.service.queries import (
    STATUSES,
    OverviewRow,
    alerts_for,
    delivery_state,
    event_filter,
    events_page,
    overview,
    spend_report,
    unpriced_models,
)
from ledger.service.views import PageRoute, Scope, page, page_principal, stylesheet
from ledger.store import load_price_book, read_snapshot

__all__ = ["router"]

router = APIRouter(route_class=PageRoute, include_in_schema=False)
BAR_WIDTH = 160


@router.get("/static/dashboard.css")
def dashboard_css() -> Response:
    return Response(
        stylesheet(), media_type="text/css; charset=utf-8", headers={"Cache-Control": "public, max-age=300"}
    )


def burn_bar(row: OverviewRow) -> dict[str, Any] | None:
    """The burn bar of a budget: spent and forecast as pixels of :data:`BAR_WIDTH` (budget = full)."""
    s = row.status
    if s is None or s.budget_nanos <= 0:
        return None

    def px(nanos: int) -> int:
        return max(0, min(BAR_WIDTH, nanos * BAR_WIDTH // s.budget_nanos))

    level = (
        "over" if s.spent_nanos > s.budget_nanos else "warn" if s.forecast_nanos > s.budget_nanos else "ok"
    )
    return {
        "width": BAR_WIDTH,
        "spent": px(s.spent_nanos),
        "forecast": px(s.forecast_nanos),
        "level": level,
        "pct": s.spent_nanos * 100 // s.budget_nanos,
        "forecast_pct": s.forecast_nanos * 100 // s.budget_nanos,
    }


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request) -> Response:
    principal = page_principal(request)
    scope = Scope(request)
    when, zone = scope.read()
    report, rows = overview(request.app.state.engine, principal, when, zone)
    return page(
        request,
        "overview.html",
        {
            "scope": scope,
            "title": "Overview",
            "period": report.period.label,
            "tz": report.tz,
            "totals": report.totals,
            "rows": [{"row": r, "bar": burn_bar(r)} for r in rows],
        },
        principal=principal,
    )


@router.get("/projects/{project}", response_class=HTMLResponse)
def project_page(request: Request, project: str) -> Response:
    principal = page_principal(request)
    scope = Scope(request)
    when, zone = scope.read()
    report = spend_report(request.app.state.engine, principal, when, zone, project)
    view = report_html.report_view(report)  # the static report's view: cards, tables and chart geometry
    return page(
        request,
        "project.html",
        {
            "scope": scope,
            "title": f"Project {project}",
            "project": project,
            "view": view,
            "totals": report.totals,
        },
        principal=principal,
    )


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request) -> Response:
    principal = page_principal(request)
    with request.app.state.engine.connect() as conn:
        records = alerts_for(conn, principal, None, 500)
    rows = [
        {
            "a": r.alert,
            "state": delivery_state(r),
            "attempts": r.attempts,
            "created": iso_z(r.alert.created_at, "seconds"),
            "next": None if r.delivered_at else iso_z(r.next_attempt_at, "seconds"),
            "delivered": None if r.delivered_at is None else iso_z(r.delivered_at, "seconds"),
            "last_error": r.last_error,
        }
        for r in records
    ]
    return page(request, "alerts.html", {"title": "Alerts", "rows": rows}, principal=principal)


@router.get("/prices", response_class=HTMLResponse)
def prices_page(request: Request) -> Response:
    principal = page_principal(request)
    with read_snapshot(request.app.state.engine) as conn:
        points = load_price_book(conn).points()
        unpriced = unpriced_models(conn, principal)
    history: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for pt in points:
        history[(pt.book, pt.model)].append(
            {
                "from": iso_z(pt.effective_from, "seconds"),
                "input": pt.input,
                "cached": pt.cached,
                "output": pt.output,
                "free": pt.free,
                "source": pt.source,
                "price_id": pt.price_id,
            }
        )
    books: list[dict[str, Any]] = []
    for (book, model), pts in sorted(history.items()):
        pts.sort(key=_effective, reverse=True)
        books.append({"book": book, "model": model, "points": pts})
    return page(
        request,
        "prices.html",
        {"title": "Prices", "books": books, "unpriced": unpriced},
        principal=principal,
    )


def _effective(point: dict[str, Any]) -> str:
    return str(point["from"])


FILTER_FIELDS = ("since", "until", "project", "model", "status", "tag")


def _field(request: Request, name: str, limit: int) -> str:
    value = (request.query_params.get(name) or "").strip()
    if len(value) > limit:
        raise ConfigError(f"{name} is longer than {limit} characters")
    return value


@router.get("/events", response_class=HTMLResponse)
def events_page_view(request: Request) -> Response:
    principal = page_principal(request)
    scope = Scope(request)
    when, zone = scope.read()
    given = {n: _field(request, n, 301 if n == "tag" else 200) for n in FILTER_FIELDS}
    cursor = _field(request, "cursor", 400) or None
    if given["status"] and given["status"] not in STATUSES:
        raise ConfigError(f"status must be one of {', '.join(STATUSES)}")
    f = event_filter(when, zone, **given)
    with request.app.state.engine.connect() as conn:
        result = events_page(conn, principal, f, cursor, request.app.state.settings.page_size)
    filters = {k: v for k, v in given.items() if v}
    rows = [
        {
            **r,
            "tag_text": ", ".join(f"{k}={v}" for k, v in sorted((r.get("tags") or {}).items())),
            "cost_nanos": None if r.get("cost_usd") is None else r["cost_usd"],
        }
        for r in result.rows
    ]
    return page(
        request,
        "events.html",
        {
            "scope": scope,
            "title": "Events",
            "given": given,
            "statuses": STATUSES,
            "rows": rows,
            "since": iso_z(f.since.astimezone(UTC)),
            "until": iso_z(f.until.astimezone(UTC)),
            "next_url": None
            if result.next_cursor is None
            else scope.url("/events", **filters, cursor=result.next_cursor),
            "csv_url": scope.url("/api/v1/events.csv", **filters),
            "first_url": scope.url("/events", **filters) if cursor else None,
            "generated": iso_z(datetime.now(UTC), "seconds"),
        },
        principal=principal,
    )


router.include_router(forms.router)
