"""Views: what every dashboard page shares: the Jinja2 environment, money for people, who is
asking, the period and zone of a view, and how an error becomes a page.

**The environment** loads this package's templates first and the static report's second
(``ledger/reports/templates``, through a ``ChoiceLoader``), so the project page draws the very
same inline SVG charts as ``cerebras-ledger report --format html``. Autoescape is on, undefined
names raise (``StrictUndefined``), and no template marks user data ``|safe``: project, model and
tag names reach the page escaped.

**Money on screen** is rounded for people by :func:`money_text` (cents, or four significant
digits under a cent); the exact 9-decimal value is in the element's ``title`` (hover).

**Errors** on a page (a bad period, zone, cursor or form field, a project the caller may not
see) are answered by :class:`PageRoute` as an HTML page with a one-line message and the status
the JSON API would give (400, 403, 404, 429), never a traceback. A page without a session sends
the browser to ``/login?next=...`` (303).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ledger.calendar import Period, iso_z
from ledger.config import ConfigError, first_line
from ledger.money import Money, MoneyError
from ledger.reports.build import ReportError
from ledger.service.api import scope_of_view
from ledger.service.app import SESSION_COOKIE, request_principal
from ledger.service.auth import Principal, csrf_token, same_secret
from ledger.service.problems import Problem

__all__ = [
    "LoginRequired",
    "PageRoute",
    "Scope",
    "check_csrf",
    "money_text",
    "page",
    "page_principal",
    "safe_next",
    "view_scope",
]

COMMON_ZONES = (
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
)
_CENT = 10_000_000  # nano-dollars
_EXACT = re.compile(r"-?\d+\.\d{9}")


# -- money for people ------------------------------------------------------------------------------


def money_text(nanos: int) -> str:
    """``nanos`` as people read it: ``$1,234.57`` (cents), or four significant digits under a cent
    (``$0.001235``, never finer than a nano-dollar); ``$0.00`` for nothing. Halves round away
    from zero."""
    amount = Decimal(int(nanos)).scaleb(-9)
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount == 0:
        return "$0.00"
    if amount * 100 < 1:
        exponent = max(-9, amount.adjusted() - 3)  # four significant digits, never past a nano-dollar
        small = amount.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP)
        if small * 100 < 1:
            return f"{sign}${small:f}"
    return f"{sign}${amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,.2f}"


def _nanos(value: Any) -> int:
    if isinstance(value, Money):
        return value.nanos
    if isinstance(value, str):
        return int(Decimal(value).scaleb(9))
    return int(value)


def _money_parts(value: Any) -> dict[str, str]:
    nanos = _nanos(value)
    return {"short": money_text(nanos), "exact": str(Money(nanos))}


def _figure_parts(text: Any) -> dict[str, str] | None:
    """A report table cell: money (an exact 9-decimal string) as parts, anything else ``None``."""
    return _money_parts(text) if isinstance(text, str) and _EXACT.fullmatch(text) else None


# -- the environment -------------------------------------------------------------------------------


@functools.cache
def _environment() -> Environment:
    env = Environment(
        loader=ChoiceLoader(
            [PackageLoader("ledger.service", "templates"), PackageLoader("ledger.reports", "templates")]
        ),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["money_parts"] = _money_parts
    env.globals["figure_parts"] = _figure_parts
    env.globals["zones"] = COMMON_ZONES
    return env


def stylesheet() -> str:
    loader = _environment().loader
    assert loader is not None
    return loader.get_source(_environment(), "dashboard.css")[0]


# -- the period and zone of a view -----------------------------------------------------------------


class Scope:
    """The period and zone a page shows, as asked (``period``/``tz`` in the URL) and as read."""

    def __init__(self, request: Request) -> None:
        q = request.query_params
        self.period_text = (q.get("period") or "").strip()[:16]
        self.tz_text = (q.get("tz") or "").strip()[:64] or "UTC"
        self.path = request.url.path
        self._period: Period | None = None
        self._zone: Any = None

    def read(self) -> tuple[Period, Any]:
        """The period and zone (a :class:`ConfigError` for a bad one: a 400 page)."""
        if self._period is None:
            self._period, self._zone = scope_of_view(self.period_text or None, self.tz_text)
        return self._period, self._zone

    @property
    def keep(self) -> dict[str, str]:
        """The query fields every link carries."""
        out = {"period": self.period_text} if self.period_text else {}
        if self.tz_text != "UTC":
            out["tz"] = self.tz_text
        return out

    def url(self, path: str, **extra: str | None) -> str:
        fields = {**self.keep, **{k: v for k, v in extra.items() if v}}
        return path + ("?" + urlencode(fields) if fields else "")


def view_scope(request: Request) -> Scope:
    return Scope(request)


# -- who is asking ---------------------------------------------------------------------------------


class LoginRequired(Exception):
    """No session: the browser goes to the login form, then back to ``next``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def page_principal(request: Request) -> Principal:
    """The caller of a page (session cookie or bearer token), or :class:`LoginRequired`."""
    principal = request_principal(request)
    if principal is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target if request.method == "GET" else request.url.path)
    return principal


def safe_next(value: str | None) -> str:
    """A local path to go back to after logging in (anything else is ``/``)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(c) < 33 or ord(c) == 127 for c in value):
        return "/"
    return value[:2000]


def check_csrf(request: Request, given: str) -> str:
    """The session's secret if ``given`` is its form token; else a 403."""
    secret = request.cookies.get(SESSION_COOKIE) or ""
    if not secret or not given or not same_secret(given, csrf_token(secret)):
        raise Problem(403, "the form is stale or forged (CSRF check failed); reload the page and try again")
    return secret


# -- rendering -------------------------------------------------------------------------------------


def page(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    principal: Principal | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """Render ``template`` with the context every page shares (nav, pickers, CSRF token)."""
    scope = context.get("scope") or Scope(request)
    secret = request.cookies.get(SESSION_COOKIE) or ""
    shared = {
        "scope": scope,
        "principal": principal,
        "csrf": csrf_token(secret) if secret and principal is not None else "",
        "path": request.url.path,
        "now": iso_z(datetime.now(UTC), "seconds"),
        "error": None,
        "quote": functools.partial(quote, safe=""),
    }
    body = _environment().get_template(template).render({**shared, **context})
    return HTMLResponse(body, status_code=status, headers=dict(headers or {}))


def error_page(
    request: Request, status: int, detail: str, headers: Mapping[str, str] | None = None
) -> Response:
    principal = None
    try:
        principal = request_principal(request) if status != 429 else None
    except Problem:
        principal = None
    message = detail.splitlines()[0][:300] if detail else HTTPStatus(status).phrase
    return page(
        request,
        "error.html",
        {"title": HTTPStatus(status).phrase, "message": message, "status": status},
        principal=principal,
        status=status,
        headers=headers,
    )


class PageRoute(APIRoute):
    """A route whose errors are pages: see the module docstring."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired as exc:
                return RedirectResponse("/login?" + urlencode({"next": exc.next_path}), status_code=303)
            except Problem as exc:
                return error_page(request, exc.status, exc.detail, exc.headers)
            except (ConfigError, ReportError, MoneyError) as exc:
                return error_page(request, 400, first_line(exc))
            except RequestValidationError as exc:
                errors = exc.errors()
                where = ".".join(str(p) for p in errors[0].get("loc", ())[1:]) if errors else ""
                what = str(errors[0].get("msg", "invalid")) if errors else "invalid"
                return error_page(request, 400, f"{where or 'request'}: {what}")

        return route
