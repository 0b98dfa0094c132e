"""Auth: service tokens, browser sessions, CSRF tokens and the failed-login throttle.

**Tokens.** ``cerebras-ledger tokens create`` makes a token ``clg_<id>_<secret>``: a public id of
12 hex digits and a secret of 32 random bytes (URL-safe base64). It is printed once; the ledger
keeps only the id and the SHA-256 of the secret (``api_tokens``). A fast hash is right here, as
for GitHub's and PyPI's API tokens: the secret is 256 random bits, so there is nothing for a slow
password hash to protect, and checking costs microseconds per request. The secret is compared
in constant time. A token has a role, ``admin`` (everything, including budget changes, rollups
and tokens) or ``viewer`` (read only), and optionally a list of projects: a viewer with projects
sees only those, everywhere. A token may expire; it can be revoked at once.

**Sessions.** The login form takes a token and opens a session (``service_sessions``): the
cookie holds 32 random bytes, the table their SHA-256, the token's id and an expiry (12 hours,
never past the token's own). Revoking the token ends its sessions. Everything is in the
database, so any number of servers behind a load balancer share sessions, and none keeps
state of its own but the login throttle below.

**CSRF.** A form's CSRF token is an HMAC of the session secret, so it needs no storage and is
worthless without the cookie; the login form, before any session, uses a double-submit cookie.
With ``SameSite=Strict`` cookies this is belt and braces.

**The throttle** is per server process: after :data:`FREE_FAILURES` failed logins or bearer
tokens from one address within :data:`WINDOW`, that address waits ``2 ** (failures - 5)``
seconds (at most 15 minutes) between attempts and is answered 429 with ``Retry-After``
meanwhile. The address is the peer's (run uvicorn with ``--proxy-headers`` behind a proxy you
trust). A guess at a 256-bit secret is hopeless anyway; the throttle keeps logs and CPU quiet.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update

from ledger.config import ConfigError, check_project
from ledger.store import write_transaction
from ledger.store.schema import ApiTokenRow, ServiceSessionRow

__all__ = [
    "ROLES",
    "SESSION_LIFETIME",
    "LoginThrottle",
    "NewToken",
    "Principal",
    "TokenInfo",
    "authenticate",
    "close_session",
    "create_token",
    "csrf_token",
    "list_tokens",
    "open_session",
    "parse_expires",
    "revoke_token",
    "same_secret",
    "session_principal",
]

ROLES = ("admin", "viewer")
PREFIX = "clg_"
SESSION_LIFETIME = timedelta(hours=12)
FREE_FAILURES = 5
WINDOW = 15 * 60.0
MAX_DELAY = 15 * 60.0
_TOKEN = re.compile(r"clg_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_EXPIRES = re.compile(r"([1-9][0-9]{0,4})([hdw])")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a token's id and role, and the projects it may see (``None``: all)."""

    token_id: str
    role: str
    projects: frozenset[str] | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def sees(self, project: str) -> bool:
        return self.projects is None or project in self.projects


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token as ``tokens list`` shows it (never its secret)."""

    token_id: str
    role: str
    projects: tuple[str, ...]
    label: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just made: ``token`` is shown once and never stored."""

    info: TokenInfo
    token: str


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def parse_expires(text: str) -> timedelta:
    """``90d``, ``12h`` or ``4w`` as a span; anything else is a :class:`ConfigError`."""
    m = _EXPIRES.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"--expires must be like 12h, 90d or 4w, got {text[:40]!r}")
    n, unit = int(m.group(1)), m.group(2)
    span = {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]
    if span > timedelta(days=3660):
        raise ConfigError("--expires is at most ten years")
    return span


def create_token(
    engine: Engine,
    role: str,
    projects: Iterable[str] = (),
    *,
    expires: timedelta | None = None,
    label: str = "",
    now: datetime | None = None,
) -> NewToken:
    """Make and store a token; its secret is in the result only."""
    if role not in ROLES:
        raise ConfigError(f"role must be admin or viewer, got {role[:40]!r}")
    names = tuple(sorted({check_project(p) for p in projects}))
    if role == "admin" and names:
        raise ConfigError("an admin token sees every project; --project is for viewer tokens")
    if len(label) > 100 or not label.isprintable():
        raise ConfigError("--label must be at most 100 printable characters")
    now = now or datetime.now(UTC)
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    info = TokenInfo(token_id, role, names, label, now, None if expires is None else now + expires, None)
    with write_transaction(engine) as conn:
        conn.execute(
            insert(ApiTokenRow).values(
                token_id=token_id,
                secret_sha256=_sha256(secret),
                role=role,
                projects=json.dumps(list(names)),
                label=label,
                created_at=info.created_at,
                expires_at=info.expires_at,
                revoked_at=None,
            )
        )
    return NewToken(info, f"{PREFIX}{token_id}_{secret}")


def list_tokens(engine: Engine) -> list[TokenInfo]:
    t = ApiTokenRow.__table__.c
    with engine.connect() as conn:
        rows = conn.execute(select(ApiTokenRow.__table__).order_by(t.created_at, t.token_id)).all()
    return [
        TokenInfo(
            r.token_id,
            r.role,
            tuple(json.loads(r.projects)),
            r.label,
            r.created_at,
            r.expires_at,
            r.revoked_at,
        )
        for r in rows
    ]


def revoke_token(engine: Engine, token_id: str, now: datetime | None = None) -> bool:
    """Revoke a token and end its sessions; whether a live token of that id existed."""
    now = now or datetime.now(UTC)
    t = ApiTokenRow.__table__.c
    with write_transaction(engine) as conn:
        done = conn.execute(
            update(ApiTokenRow).where(t.token_id == token_id, t.revoked_at.is_(None)).values(revoked_at=now)
        ).rowcount
        conn.execute(delete(ServiceSessionRow).where(ServiceSessionRow.__table__.c.token_id == token_id))
    return bool(done)


def _principal(row: ApiTokenRow | None, now: datetime) -> Principal | None:
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= now:
        return None
    names = json.loads(row.projects)
    return Principal(row.token_id, row.role, frozenset(names) if names else None)


def authenticate(engine: Engine, token: str, now: datetime | None = None) -> Principal | None:
    """The principal of a live token, or ``None`` (unknown, wrong secret, revoked or expired)."""
    m = _TOKEN.fullmatch(token)
    if m is None:
        return None
    now = now or datetime.now(UTC)
    t = ApiTokenRow.__table__.c
    with engine.connect() as conn:
        row = conn.execute(select(ApiTokenRow.__table__).where(t.token_id == m.group(1))).first()
    if row is None or not same_secret(_sha256(m.group(2)), row.secret_sha256):
        return None
    return _principal(row, now)  # type: ignore[arg-type]


def open_session(engine: Engine, principal: Principal, now: datetime | None = None) -> tuple[str, datetime]:
    """A new session for ``principal``: (the cookie's secret, when it expires)."""
    now = now or datetime.now(UTC)
    secret = secrets.token_urlsafe(32)
    t = ApiTokenRow.__table__.c
    with write_transaction(engine) as conn:
        token_expiry = conn.execute(select(t.expires_at).where(t.token_id == principal.token_id)).scalar()
        until = now + SESSION_LIFETIME
        if token_expiry is not None:
            until = min(until, token_expiry)
        # sessions that have ended are swept as new ones open, so the table stays small
        conn.execute(delete(ServiceSessionRow).where(ServiceSessionRow.__table__.c.expires_at <= now))
        conn.execute(
            insert(ServiceSessionRow).values(
                session_sha256=_sha256(secret), token_id=principal.token_id, created_at=now, expires_at=until
            )
        )
    return secret, until


def session_principal(engine: Engine, secret: str, now: datetime | None = None) -> Principal | None:
    """The principal of a live session cookie, or ``None``."""
    if not 20 <= len(secret) <= 64 or not secret.isascii():
        return None
    now = now or datetime.now(UTC)
    s = ServiceSessionRow.__table__.c
    with engine.connect() as conn:
        row = conn.execute(
            select(ApiTokenRow.__table__, s.expires_at.label("session_expires"))
            .join(ServiceSessionRow.__table__, s.token_id == ApiTokenRow.__table__.c.token_id)
            .where(s.session_sha256 == _sha256(secret))
        ).first()
    if row is None or row.session_expires <= now:
        return None
    return _principal(row, now)  # type: ignore[arg-type]


def close_session(engine: Engine, secret: str) -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            delete(ServiceSessionRow).where(
                ServiceSessionRow.__table__.c.session_sha256 == _sha256(secret[:64])
            )
        )


def same_secret(given: str, expected: str) -> bool:
    """Whether ``given`` (from a request: any text) is ``expected``, in constant time. Compared
    as UTF-8 bytes: ``hmac.compare_digest`` raises on non-ASCII ``str``, and a forged form field
    must be refused like any other wrong one, not crash the request."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def csrf_token(secret: str) -> str:
    """The CSRF token of the forms of the session (or login cookie) ``secret``."""
    return hmac.new(secret.encode("ascii", "replace"), b"ledger-csrf", hashlib.sha256).hexdigest()


class LoginThrottle:
    """Failed authentications per address, in this process (see the module docstring)."""

    def __init__(self, max_addresses: int = 10_000) -> None:
        self._seen: OrderedDict[str, tuple[int, float, float]] = OrderedDict()  # failures, first, last
        self._lock = threading.Lock()
        self._max = max_addresses

    def wait(self, address: str, now: float | None = None) -> float:
        """Seconds ``address`` must still wait before its next attempt (0: go ahead)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            entry = self._seen.get(address)
            if entry is None:
                return 0.0
            failures, first, last = entry
            if now - first > WINDOW and now - last > MAX_DELAY:
                del self._seen[address]
                return 0.0
            if failures < FREE_FAILURES:
                return 0.0
            delay = min(MAX_DELAY, 2.0 ** (failures - FREE_FAILURES))
            return max(0.0, last + delay - now)

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            failures, first, _ = self._seen.pop(address, (0, now, now))
            if now - first > WINDOW:
                failures, first = 0, now
            self._seen[address] = (failures + 1, first, now)
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._seen.pop(address, None)
