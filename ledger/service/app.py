"""App: the one ASGI application of ``cerebras-ledger serve``, on FastAPI and uvicorn.

**Why FastAPI.** It is Starlette (the ASGI toolkit: routing, Jinja2 templates, streaming
responses, test client) plus the one thing this service would otherwise hand-write: an OpenAPI
document generated from the typed handlers, so ``/api/v1/openapi.json`` cannot drift from the
code. Validation errors, like every other error, are answered as RFC 9457 problems
(:mod:`ledger.service.problems`). Its interactive docs pages load scripts from a CDN, so they
are off (the CSP forbids them anyway).

**What answers without a token:** ``/healthz`` and ``/readyz``, the login form and the
stylesheet. Everything else takes ``Authorization: Bearer <token>`` or a session cookie
(:mod:`ledger.service.auth`); the JSON API and ``/metrics`` answer 401 without one, pages send
the browser to the login form.

**Every response** carries a strict CSP (``default-src 'none'``, styles and images from the
server itself, no script at all), ``nosniff``, no framing, no referrer and ``no-store``.
Request bodies over :attr:`Settings.max_body_bytes` and query strings over 4 KiB are refused
(413, 414) before a handler runs.

**Stateless on PostgreSQL.** Tokens, sessions, budgets and figures all live in the database, so
any number of servers can stand behind a load balancer. Each process keeps only its engine and
its failed-login throttle. Handlers are plain functions, which FastAPI runs in its thread pool,
so a slow query never blocks the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Engine, text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from ledger.config import ConfigError, first_line
from ledger.money import MoneyError
from ledger.reports.build import ReportError
from ledger.service.auth import LoginThrottle, Principal, authenticate, session_principal
from ledger.service.health import read_health
from ledger.service.problems import Problem, problem_response

__all__ = [
    "SESSION_COOKIE",
    "Settings",
    "admin_principal",
    "api_principal",
    "client_address",
    "create_app",
    "request_principal",
]

log = logging.getLogger("ledger.service")

SESSION_COOKIE = "ledger_session"
MAX_QUERY = 4096
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Settings:
    """How the service runs.

    Attributes:
        spool_dir: the spool folder whose backlog ``/readyz`` and ``/metrics`` watch (``None``: none).
        max_body_bytes: the largest request body accepted (forms and JSON are small).
        max_writer_lag_seconds, max_rollup_lag_seconds: ``/readyz`` fails past these.
        metrics_max_projects, metrics_max_models: label values kept per label in ``/metrics``;
            the rest are summed under ``other``.
        page_size: rows per events page (the API takes ``limit`` up to :attr:`max_page_size`).
    """

    spool_dir: Path | None = None
    max_body_bytes: int = 64 * 1024
    max_writer_lag_seconds: float = 300.0
    max_rollup_lag_seconds: float = 3600.0
    metrics_max_projects: int = 100
    metrics_max_models: int = 50
    page_size: int = 50
    max_page_size: int = 500

    @classmethod
    def from_env(cls, env: Mapping[str, str], spool_dir: Path | None = None) -> Settings:
        """Settings from ``LEDGER_SERVICE_<NAME>`` variables (e.g. ``LEDGER_SERVICE_METRICS_MAX_PROJECTS``);
        a bad value is a :class:`ConfigError` naming it."""
        values: dict[str, Any] = {"spool_dir": spool_dir}
        limits = {
            "max_body_bytes": (1024, 16 * 1024 * 1024),
            "max_writer_lag_seconds": (1, 86_400),
            "max_rollup_lag_seconds": (1, 30 * 86_400),
            "metrics_max_projects": (1, 10_000),
            "metrics_max_models": (1, 10_000),
        }
        for name, (low, high) in limits.items():
            raw = env.get(f"LEDGER_SERVICE_{name.upper()}")
            if raw is None:
                continue
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"LEDGER_SERVICE_{name.upper()} must be a whole number") from None
            if not low <= value <= high:
                raise ConfigError(f"LEDGER_SERVICE_{name.upper()} must be between {low} and {high}")
            values[name] = value
        return cls(**values)


class _Guard:
    """Pure ASGI middleware: security headers on every response, size limits on every request,
    and the last word on an unexpected error (one log line, a 500 problem, never a traceback)."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        try:
            await self._guarded(scope, receive, send_with_headers)
        except Exception as exc:  # noqa: BLE001 - the app's 500 is already answered; the server must not log a traceback
            # Starlette answers an unexpected error with the app's 500 handler and then re-raises
            # it for the server to log (with a traceback, and uvicorn drops the connection).
            # It was logged in one line by that handler, so it stops here.
            if not started:
                log.error(
                    "service: %s %s failed (%s)", scope.get("method"), scope.get("path"), type(exc).__name__
                )
                await problem_response(500, "the server could not answer; the error is logged")(
                    scope, receive, send_with_headers
                )

    async def _guarded(self, scope: Scope, receive: Receive, send_with_headers: Send) -> None:
        if len(scope.get("query_string", b"")) > MAX_QUERY:
            await problem_response(414, "the query string is too long")(scope, receive, send_with_headers)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = -1
                if size < 0 or size > self.max_body:
                    response = problem_response(
                        413 if size > 0 else 400,
                        f"the request body is over {self.max_body} bytes"
                        if size > 0
                        else "a bad Content-Length",
                    )
                    await response(scope, receive, send_with_headers)
                    return
        seen = 0
        refused = False

        async def limited_receive() -> Message:
            # A body without Content-Length is counted as it arrives: past the limit, the 413 goes
            # out at once, the app is told the client left, and whatever it answers is dropped.
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    refused = True
                    too_big = problem_response(413, f"the request body is over {self.max_body} bytes")
                    await too_big(scope, receive, send_with_headers)
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            if not refused:
                await send_with_headers(message)

        await self.app(scope, limited_receive, send_unless_refused)


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _throttled(request: Request) -> None:
    wait = request.app.state.throttle.wait(client_address(request))
    if wait > 0:
        seconds = str(int(wait) + 1)
        raise Problem(
            429,
            f"too many failed logins from this address; try again in {seconds} s",
            headers={"Retry-After": seconds},
        )


def request_principal(request: Request) -> Principal | None:
    """Who sent ``request``: its bearer token, else its session cookie, else ``None``. A bad bearer
    token counts as a failed login (and a throttled address is refused before it is checked)."""
    engine: Engine = request.app.state.engine
    header = request.headers.get("authorization")
    if header is not None:
        _throttled(request)
        scheme, _, token = header.partition(" ")
        principal = authenticate(engine, token.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            request.app.state.throttle.failed(client_address(request))
            raise Problem(
                401, "the token is not valid", headers={"WWW-Authenticate": 'Bearer realm="ledger"'}
            )
        return principal
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return session_principal(engine, cookie)
    return None


def api_principal(request: Request) -> Principal:
    """FastAPI dependency: the caller, or 401."""
    principal = request_principal(request)
    if principal is None:
        raise Problem(401, "a token is required", headers={"WWW-Authenticate": 'Bearer realm="ledger"'})
    return principal


def admin_principal(request: Request) -> Principal:
    """FastAPI dependency: an admin caller, or 401 / 403."""
    principal = api_principal(request)
    if not principal.is_admin:
        raise Problem(403, "this needs an admin token")
    return principal


def create_app(engine: Engine, settings: Settings | None = None) -> Any:
    """The service's ASGI app on ``engine`` (whose schema is current)."""
    from ledger.service import api, metrics, pages

    settings = settings or Settings()
    app = FastAPI(
        title="cerebras-ledger",
        version=_version(),
        openapi_url=None,  # served below, behind auth
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.settings = settings
    app.state.throttle = LoginThrottle()

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> Response:
        return problem_response(exc.status, exc.detail, exc.headers, instance=request.url.path, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0].get("loc", ())[1:]) if errors else ""
        what = str(errors[0].get("msg", "invalid")) if errors else "invalid"
        return problem_response(
            400, f"{where or 'request'}: {what}", instance=request.url.path, errors=_safe_errors(errors)
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (404, 405) and not _signed_in(request):
            # an unknown path tells a stranger nothing either: without a token, every path but
            # the open ones is "a token is required"
            return problem_response(
                401, "a token is required", {"WWW-Authenticate": 'Bearer realm="ledger"'}, request.url.path
            )
        return problem_response(
            exc.status_code, str(exc.detail), dict(exc.headers or {}), instance=request.url.path
        )

    @app.exception_handler(ConfigError)
    async def on_config(request: Request, exc: ConfigError) -> Response:
        return problem_response(400, first_line(exc), instance=request.url.path)

    @app.exception_handler(ReportError)
    async def on_report(request: Request, exc: ReportError) -> Response:
        return problem_response(400, first_line(exc), instance=request.url.path)

    @app.exception_handler(MoneyError)
    async def on_money(request: Request, exc: MoneyError) -> Response:
        return problem_response(400, first_line(exc), instance=request.url.path)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> Response:
        log.error("service: %s %s failed (%s)", request.method, request.url.path, type(exc).__name__)
        return problem_response(
            500, "the server could not answer; the error is logged", instance=request.url.path
        )

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            health = read_health(engine, settings.spool_dir)
        except Exception as exc:  # noqa: BLE001 - any database error means "not ready"
            log.warning("service: not ready: the database does not answer (%s)", type(exc).__name__)
            return problem_response(503, "the database does not answer")
        body: dict[str, Any] = {
            "status": "ok",
            "spool_backlog_bytes": health.spool_backlog_bytes,
            "writer_lag_seconds": round(health.writer_lag_seconds, 3),
            "rollup_pending_batches": health.rollup_pending_batches,
            "rollup_lag_seconds": round(health.rollup_lag_seconds, 3),
        }
        if health.writer_lag_seconds > settings.max_writer_lag_seconds:
            return problem_response(
                503, "the spool writer is behind", None, None, **{**body, "status": "behind"}
            )
        if health.rollup_lag_seconds > settings.max_rollup_lag_seconds:
            return problem_response(503, "the rollups are behind", None, None, **{**body, "status": "behind"})
        return JSONResponse(body)

    app.include_router(api.router)
    app.include_router(metrics.router)
    app.include_router(pages.router)
    return _Guard(app, settings.max_body_bytes)


def _signed_in(request: Request) -> bool:
    try:
        return request_principal(request) is not None
    except Problem:
        return False


def _safe_errors(errors: Any) -> list[dict[str, str]]:
    """Validation errors without the input values (which could be anything, secrets included)."""
    return [
        {"loc": ".".join(str(p) for p in e.get("loc", ())), "msg": str(e.get("msg", ""))[:200]}
        for e in list(errors)[:10]
    ]


def _version() -> str:
    from ledger._version import __version__

    return __version__
