"""Forms: the dashboard's writes and the pages that carry them: login, logout and budgets.

* ``GET /login`` shows the token form with a double-submit CSRF token (a random
  ``ledger_login`` cookie and a hidden field of :func:`~ledger.service.auth.csrf_token` of it).
  ``POST /login`` is refused while the address is throttled (429), counts a bad token as a failed
  login (401, the form again with one line), and on success opens a session: cookie
  ``ledger_session``, ``HttpOnly``, ``SameSite=Strict``, ``Secure`` over HTTPS, ``Path=/``,
  ``Max-Age`` to the session's end; then 303 to ``next`` if it is a local path.
* ``POST /logout`` ends the session.
* ``GET /budgets`` lists the budgets the caller sees; admins also get forms to set, change
  (``POST /budgets/{project}``, or ``POST /budgets`` with a ``project`` field for a new one) and
  remove (``POST /budgets/{project}/delete``) them.

Every POST but the login checks the form's CSRF token (an HMAC of the session cookie) before
anything else: missing or wrong is a 403. Bad input shows the page again with a one-line
error and status 400.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ledger.budgets.budgets import get_budget, remove_budget, set_budget
from ledger.config import ConfigError, check_project, first_line
from ledger.service.app import SESSION_COOKIE, client_address
from ledger.service.auth import Principal, authenticate, close_session, csrf_token, open_session, same_secret
from ledger.service.problems import Problem
from ledger.service.queries import budgets_for
from ledger.service.views import PageRoute, check_csrf, page, page_principal, safe_next
from ledger.store import read_snapshot

__all__ = ["LOGIN_COOKIE", "router"]

router = APIRouter(route_class=PageRoute, include_in_schema=False)
LOGIN_COOKIE = "ledger_login"
Text = Annotated[str, Form(max_length=200)]
Csrf = Annotated[str, Form(max_length=128)]


# -- login and logout ------------------------------------------------------------------------------


def _login_form(
    request: Request, next_path: str, error: str | None = None, status: int = 200, **headers: str
) -> Response:
    secret = request.cookies.get(LOGIN_COOKIE) or ""
    fresh = not (20 <= len(secret) <= 64 and secret.isascii())
    if fresh:
        secret = secrets.token_urlsafe(32)
    response = page(
        request,
        "login.html",
        {"title": "Log in", "login_csrf": csrf_token(secret), "next": next_path, "error": error},
        status=status,
        headers=headers,
    )
    if fresh:
        response.set_cookie(
            LOGIN_COOKIE,
            secret,
            max_age=3600,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    return _login_form(request, safe_next(request.query_params.get("next")))


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    token: Annotated[str, Form(max_length=200)] = "",
    csrf: Csrf = "",
    next_path: Annotated[str, Form(alias="next", max_length=2000)] = "/",
) -> Response:
    target = safe_next(next_path)
    secret = request.cookies.get(LOGIN_COOKIE) or ""
    if not secret or not csrf or not same_secret(csrf, csrf_token(secret)):
        raise Problem(403, "the login form is stale or forged (CSRF check failed); reload it and try again")
    throttle = request.app.state.throttle
    address = client_address(request)
    wait = throttle.wait(address)
    if wait > 0:
        seconds = str(int(wait) + 1)
        return _login_form(
            request,
            target,
            f"too many failed logins from this address; try again in {seconds} s",
            429,
            **{"Retry-After": seconds},
        )
    engine = request.app.state.engine
    principal = authenticate(engine, token.strip())
    if principal is None:
        throttle.failed(address)
        return _login_form(request, target, "that token is not valid (unknown, revoked or expired)", 401)
    throttle.succeeded(address)
    session, until = open_session(engine, principal)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=max(1, int((until - datetime.now(UTC)).total_seconds())),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.post("/logout")
def logout(request: Request, csrf: Csrf = "") -> Response:
    secret = check_csrf(request, csrf)
    close_session(request.app.state.engine, secret)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- budgets ---------------------------------------------------------------------------------------


def _budget_rows(request: Request, principal: Principal) -> list[dict[str, Any]]:
    with read_snapshot(request.app.state.engine) as conn:
        rows = budgets_for(conn, principal, datetime.now(UTC))
    return [
        {
            "b": b,
            "s": s,
            "thresholds": ",".join(str(t) for t in b.thresholds),
            "monthly": "" if b.monthly is None else str(b.monthly),
            "daily": "" if b.daily is None else str(b.daily),
            "timezone": b.timezone,
        }
        for b, s in rows
    ]


def budgets_view(
    request: Request,
    principal: Principal,
    error: str | None = None,
    status: int = 200,
    draft: dict[str, Any] | None = None,
) -> Response:
    return page(
        request,
        "budgets.html",
        {
            "title": "Budgets",
            "rows": _budget_rows(request, principal),
            "error": error,
            "draft": draft
            or {"project": "", "monthly": "", "daily": "", "thresholds": "50,80,100", "timezone": "UTC"},
        },
        principal=principal,
        status=status,
    )


@router.get("/budgets", response_class=HTMLResponse)
def budgets_page(request: Request) -> Response:
    return budgets_view(request, page_principal(request))


def _writer(request: Request, csrf: str) -> Principal:
    """The admin behind a budget form: a session, a good CSRF token and the admin role."""
    principal = page_principal(request)
    check_csrf(request, csrf)
    if not principal.is_admin:
        raise Problem(403, "changing budgets needs an admin token")
    return principal


def _save(
    request: Request,
    project: str,
    csrf: str,
    monthly: str,
    daily: str,
    thresholds: str,
    timezone: str,
    free_only: str,
    hard: str,
) -> Response:
    principal = _writer(request, csrf)
    draft = {
        "project": project,
        "monthly": monthly,
        "daily": daily,
        "thresholds": thresholds,
        "timezone": timezone,
    }
    try:
        set_budget(
            request.app.state.engine,
            check_project(project.strip()),
            monthly=monthly.strip() or None,
            daily=daily.strip() or None,
            thresholds=thresholds.strip() or "50,80,100",
            timezone=timezone.strip() or "UTC",
            free_only=bool(free_only),
            hard=bool(hard),
        )
    except ConfigError as exc:
        return budgets_view(request, principal, first_line(exc), 400, draft)
    return RedirectResponse("/budgets", status_code=303)


@router.post("/budgets", response_class=HTMLResponse)
def new_budget(
    request: Request,
    project: Text = "",
    csrf: Csrf = "",
    monthly: Text = "",
    daily: Text = "",
    thresholds: Text = "",
    timezone: Text = "",
    free_only: Text = "",
    hard: Text = "",
) -> Response:
    return _save(request, project, csrf, monthly, daily, thresholds, timezone, free_only, hard)


@router.post("/budgets/{project}", response_class=HTMLResponse)
def change_budget(
    request: Request,
    project: str,
    csrf: Csrf = "",
    monthly: Text = "",
    daily: Text = "",
    thresholds: Text = "",
    timezone: Text = "",
    free_only: Text = "",
    hard: Text = "",
) -> Response:
    return _save(request, project, csrf, monthly, daily, thresholds, timezone, free_only, hard)


@router.post("/budgets/{project}/delete", response_class=HTMLResponse)
def delete_budget(request: Request, project: str, csrf: Csrf = "") -> Response:
    principal = _writer(request, csrf)
    engine = request.app.state.engine
    with engine.connect() as conn:
        had = get_budget(conn, project) is not None
    if not had or not remove_budget(engine, project):
        return budgets_view(request, principal, "this project has no budget", 404)
    return RedirectResponse("/budgets", status_code=303)
