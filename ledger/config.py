"""Configuration: where things are, read from arguments first and the environment second.

Every setting has one name here, one environment variable and one default:

=========================  ================================================================
``LEDGER_HOME``            data folder; default ``$XDG_DATA_HOME/cerebras-ledger``
                           (``~/.local/share/cerebras-ledger``)
``LEDGER_DATABASE_URL``    any SQLAlchemy URL; default ``sqlite:///$LEDGER_HOME/ledger.db``
``LEDGER_SPOOL_DIR``       the local spool; default ``$LEDGER_HOME/spool/<hash of the URL>``
``LEDGER_PROJECT``         the project of calls that name none
``CEREBRAS_BASE_URL``      default ``https://api.cerebras.ai``
``CEREBRAS_API_KEY``       the key for direct calls (never stored)
``LAVA_FORWARD_TOKEN``     when set, calls go through Lava's forward proxy (never stored)
``LAVA_BASE_URL``          default ``https://api.lava.so``
``LEDGER_PRICES_FEED_URL`` base of Cerebras's public model feed; default ``https://api.cerebras.ai``
=========================  ================================================================

Project names are untrusted text: :func:`check_project` admits 1-200 printable characters
(Python's ``str.isprintable``: no control, format, separator other than the ASCII space, or
unassigned code points, so no NUL, newline, tab, RTL override, zero-width character or lone
surrogate) whose first character is not ``=``, ``+``, ``-`` or ``@``, and nothing else. The
first-character rule keeps every accepted name inert in a spreadsheet (OWASP CSV injection: a
cell beginning with one of those is read as a formula), so project names appear byte-exact in
every CSV the ledger writes; ``-`` would also read as an option on the command line. Names are
compared exactly, code point by code point (no case folding, no Unicode normalization).

Credentials: :func:`redact_url` and :func:`redact` are the one way a database URL, or text
that may quote one (a driver's exception), reaches a log or an error line. The spool folder is
the owner's alone (:func:`spool_folder`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = [
    "ConfigError",
    "check_project",
    "database_url",
    "is_lava_byok",
    "log_to_stderr",
    "owned_by_us",
    "private_dir",
    "describe",
    "Progress",
    "first_line",
    "redact",
    "redact_url",
    "remember_secrets",
    "spreadsheet_cell",
    "spool_dir",
    "spool_folder",
]

log = logging.getLogger("ledger.config")

MAX_PROJECT_LEN = 200
FORMULA_START = frozenset("=+-@")  # a spreadsheet cell starting with one is a formula
_CELL_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


class ConfigError(ValueError):
    """A setting that cannot be used, said in one line."""


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def ledger_home(env: Mapping[str, str] | None = None) -> Path:
    e = _env(env)
    if e.get("LEDGER_HOME"):
        return Path(e["LEDGER_HOME"]).expanduser()
    base = e.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "cerebras-ledger"


def database_url(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The ledger's SQLAlchemy URL: the argument, else ``LEDGER_DATABASE_URL``, else the default."""
    url = explicit or _env(env).get("LEDGER_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{ledger_home(env) / 'ledger.db'}"


# A query or connection-string key whose value is a credential (password, passwd, pwd,
# sslpassword, passfile, token, access_token, secret, key, api_key, sslkey, auth...):
# matched loosely on purpose; hiding a harmless value costs nothing.
_SECRET_NAME = re.compile(r"pass|pwd|token|secret|key|auth|cred", re.IGNORECASE)
# In free text (an error message), a narrower test: ``use KEY=VALUE`` is no credential.
_TEXT_SECRET_NAME = re.compile(r"pass|pwd|token|secret|api_?key|._key$|cred", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"(?<=[?&;])([^&;=?#]*)=([^&;#]*)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_TEXT_PAIR = re.compile(r"""\b([A-Za-z_][A-Za-z0-9_]*)(\s*=\s*)('(?:[^'\\]|\\.)*'|"[^"]*"|[^\s,;&)'"]+)""")
_DICT_PAIR = re.compile(r"""(['"])([A-Za-z_][A-Za-z0-9_]*)\1(\s*:\s*)('(?:[^'\\]|\\.)*'|"[^"]*")""")
_known_secrets: set[str] = set()


def _secret_name(name: str) -> bool:
    from urllib.parse import unquote

    return bool(_SECRET_NAME.search(unquote(name)))


def _split_userinfo(rest: str) -> tuple[str, str, str] | None:
    """``(user, password, after)`` of the part after ``scheme://``, if it has a password. The
    userinfo ends at the *last* ``@``, so a password with a raw ``@``, ``/`` or ``?`` in it is
    hidden whole (an ``@`` further on, in the query, hides more than needed, never less)."""
    at = rest.rfind("@")
    if at < 0:
        return None
    creds = rest[:at]
    user, colon, password = creds.partition(":")
    return (user, password, rest[at + 1 :]) if colon else None


def url_secrets(url: str) -> list[str]:
    """The credentials in ``url``: its password and every secret-looking query value, as
    written and percent-decoded."""
    from urllib.parse import unquote

    found: list[str] = []
    scheme, sep, rest = url.partition("://")
    if sep and (parts := _split_userinfo(rest)) is not None:
        found.append(parts[1])
    found += [m.group(2) for m in _QUERY_PAIR.finditer(url) if _secret_name(m.group(1))]
    found += [unquote(v) for v in found]
    return [v for v in dict.fromkeys(found) if v]


def remember_secrets(url: str) -> None:
    """Keep ``url``'s credentials in mind, so :func:`redact` hides them in any text (an
    exception's message that quotes them, a driver's echo of the connection string)."""
    _known_secrets.update(url_secrets(url))


def redact_url(url: str) -> str:
    """The URL with every credential replaced by ``***``, for logs and messages: the password
    of the userinfo, and the value of every query key that names a secret (``password``,
    ``sslpassword``, ``pwd``, ``token``, ``secret``, ``api_key``, ..., in any case, also
    percent-encoded)."""
    scheme, sep, rest = url.partition("://")
    if sep and (parts := _split_userinfo(rest)) is not None:
        user, _, after = parts
        url = f"{scheme}://{user}:***@{after}"
    return _QUERY_PAIR.sub(lambda m: f"{m.group(1)}=***" if _secret_name(m.group(1)) else m.group(0), url)


Progress = Callable[[int], None]
"""The one progress convention: called with how many more units are done since the last call
(``click.progressbar``'s ``update``), never a running total."""


def first_line(what: BaseException | str, limit: int | None = 200) -> str:
    """The first line of an exception's message (or of a text), cut at ``limit`` characters
    (``None``: not cut); ``""`` when it is empty. Never the lines after it: a driver's message goes
    on to quote SQL and its parameters. Redact it (:func:`redact`) before it reaches a log."""
    text = str(what)
    line = text.splitlines()[0] if text else ""
    return line if limit is None else line[:limit]


def describe(exc: BaseException, limit: int | None = 200) -> str:
    """``Type: first line of the message`` (just ``Type`` when it has none): what went wrong, in
    one line (:func:`first_line`)."""
    line = first_line(exc, limit)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def redact(text: str, url: str | None = None) -> str:
    """``text`` (a log line, an error message, a driver's exception) with every credential
    hidden: URLs in it go through :func:`redact_url`, ``password=...``-like pairs (and
    ``'password': '...'``) lose their values, and the secrets of ``url`` and of every URL
    given to :func:`remember_secrets` are replaced wherever they appear."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    text = _TEXT_PAIR.sub(
        lambda m: f"{m.group(1)}{m.group(2)}***" if _TEXT_SECRET_NAME.search(m.group(1)) else m.group(0), text
    )
    text = _DICT_PAIR.sub(
        lambda m: (
            f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}'***'"
            if _TEXT_SECRET_NAME.search(m.group(2))
            else m.group(0)
        ),
        text,
    )
    secrets = set(_known_secrets)
    if url:
        secrets.update(url_secrets(url))
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
        else:  # a very short one only as a whole word, or every "a" in the text would go
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text


def private_dir(path: Path) -> None:
    """Make ``path`` and any missing parents, each readable by the owner only (0700)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)


def owned_by_us(st: os.stat_result) -> bool:
    """Whether a file is this user's alone to write: owned by our effective uid, and neither
    group- nor world-writable."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def spool_folder(path: Path, *, create: bool = True) -> Path:
    """``path``, made if missing (``create``), as a spool folder that is this user's alone.

    A folder owned by another user is refused (:class:`ConfigError`, one line): whoever owns it
    could plant segments the ledger would ingest or a stop file it would obey. A folder of ours
    that others may read or write is made 0700, with a warning."""
    if create:
        private_dir(path)
    try:
        st = os.stat(path)  # through a symlink: the folder actually used
    except OSError as exc:
        raise ConfigError(f"spool folder {path} cannot be used: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"spool folder {path} is not a folder")
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"spool folder {path} belongs to uid {st.st_uid}, not to this user "
            f"(uid {os.geteuid()}); refusing to use it: set LEDGER_SPOOL_DIR to a folder of your own"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
        log.warning(
            "ledger: spool folder %s was open to others (mode %04o); made it owner-only (0700)",
            path,
            stat.S_IMODE(st.st_mode),
        )
    return path


def spool_dir(
    url: str, explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """Where events wait before the database has them; one folder per ledger URL."""
    chosen = explicit or _env(env).get("LEDGER_SPOOL_DIR")
    if chosen:
        return Path(chosen).expanduser()
    # The key hides the userinfo password only, as it always has: a spool made by an earlier
    # version keeps its folder, so its events are still recovered.
    scheme, sep, rest = url.partition("://")
    parts = _split_userinfo(rest) if sep else None
    keyed = url if parts is None else f"{scheme}://{parts[0]}:***@{parts[2]}"
    key = hashlib.sha256(keyed.encode()).hexdigest()[:16]
    return ledger_home(env) / "spool" / key


def check_project(name: object) -> str:
    """Accept a project name or raise :class:`ConfigError` saying why not."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("a project is required: pass project=... or set LEDGER_PROJECT")
    if len(name) > MAX_PROJECT_LEN:
        raise ConfigError(f"project name longer than {MAX_PROJECT_LEN} characters")
    if not name.isprintable():
        raise ConfigError("project name has control or non-printable characters")
    if name[0] in FORMULA_START:
        raise ConfigError(
            "project name may not begin with =, +, - or @ (a spreadsheet would read it as a formula)"
        )
    return name


def spreadsheet_cell(text: str) -> str:
    """``text`` as a cell of a CSV file meant for spreadsheets (OWASP CSV injection advice).

    A cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a
    formula by Excel, LibreOffice and Google Sheets; such a cell gets a leading ``'`` so that it
    is shown as text. Plain decimal numbers (``-0.000000350``, ``-12.50``) are left alone: they
    are what the ledger writes for negative amounts, and a spreadsheet reads them as numbers.
    Accepted project names never begin with a formula character (see :func:`check_project`), so
    they are never changed; tags and model names may be.
    """
    if text[:1] in _CELL_FORMULA_START and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def is_lava_byok(forward_token: str) -> bool:
    """Whether a Lava forward token carries the caller's own provider key (unmanaged mode).

    The token is either a bare secret key or base64 of a JSON object; a non-null
    ``provider_key`` means the provider bills the caller at its own rates. Nothing from the
    token is kept.
    """
    raw = forward_token.strip()
    try:
        padded = raw + "=" * (-len(raw) % 4)
        decoded = json.loads(base64.b64decode(padded, validate=False))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return False
    return isinstance(decoded, dict) and bool(decoded.get("provider_key"))


class RedactingFormatter(logging.Formatter):
    """A log formatter whose every line (traceback included) goes through :func:`redact`: the
    ledger's own processes (the CLI, the scheduler, the writer process) log through it."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def log_to_stderr(level: int) -> None:
    """``logging.basicConfig`` with a :class:`RedactingFormatter` (messages only)."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
