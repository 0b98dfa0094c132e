"""Route: what the ledger reads of a request before it is sent, never the prompt.

Where it goes (:func:`target`): a billed endpoint (``events.ENDPOINT_PATHS``) called directly
(route ``cerebras``, book ``cerebras``) or through Lava's forward proxy, ``…/v1/forward?u=<target>``
(route ``lava``; book ``cerebras`` for a bring-your-own-key forward token, else ``lava``); any
other request is ``None`` and passes through unrecorded. What it says: the names of the ledger's
own headers (``x-ledger-project`` / ``x-ledger-tags``) and the syntax of the tags one
(:func:`parse_tags_header`), and the body's model, ``stream`` and ``service_tier``
(:func:`request_facts`, found without parsing a big body).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from ledger.config import is_lava_byok
from ledger.events import ENDPOINT_PATHS, Route

__all__ = [
    "PROJECT_HEADER",
    "TAGS_HEADER",
    "RequestFacts",
    "Target",
    "parse_tags_header",
    "request_facts",
    "target",
]

PROJECT_HEADER = "x-ledger-project"
TAGS_HEADER = "x-ledger-tags"


@functools.lru_cache(maxsize=32)
def _book_for_forward(authorization: str) -> str:
    token = authorization.removeprefix("Bearer ").removeprefix("bearer ")
    return "cerebras" if is_lava_byok(token) else "lava"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a billed request goes: its route, the price book it is priced by, its endpoint."""

    route: Route
    book: str
    endpoint: str


def _endpoint(path: str) -> str | None:
    for name, suffix in ENDPOINT_PATHS:
        if path.endswith(suffix):
            return name
    return None


def target(request: Any) -> Target | None:
    """Whether ``request`` is a billed completion (:data:`ledger.events.ENDPOINT_PATHS`), and by which route.

    Lava's forward proxy is ``…/v1/forward?u=<target>``; SDKs pointed at it with a ``base_url``
    of ``…/v1/forward?u=<base>`` send ``…/v1/forward/chat/completions?u=<base>``, so the target
    is ``u`` plus whatever path follows ``/v1/forward``.
    """
    path: str = request.url.path
    head, sep, rest = path.partition("/v1/forward")
    if sep and (not rest or rest.startswith("/")):
        query = request.url.query
        raw = query.decode("ascii", "replace") if isinstance(query, bytes) else str(query)
        targets = parse_qs(raw).get("u")
        target = (unquote(targets[0]).split("?", 1)[0] if targets else "").rstrip("/") + rest
        endpoint = _endpoint(target)
        if endpoint is not None:
            return Target("lava", _book_for_forward(request.headers.get("authorization", "")), endpoint)
        return None
    endpoint = _endpoint(path)
    return None if endpoint is None else Target("cerebras", "cerebras", endpoint)


def parse_tags_header(value: str) -> dict[str, str]:
    value = value.strip()
    if value.startswith("{"):
        parsed = json.loads(value)
        if not isinstance(parsed, dict):
            raise ValueError("tags header is not an object")
        return {str(k): str(v) for k, v in parsed.items()}
    pairs = (p.split("=", 1) for p in value.split(",") if p.strip())
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the ledger keeps of a request body: the model, whether it asked for a stream, and its
    ``service_tier``. Never the prompt."""

    model: str | None
    stream: bool
    service_tier: str | None


def request_facts(request: Any) -> RequestFacts:
    """The request's :class:`RequestFacts`, found the way :func:`_requested_model` finds the
    model: a key met once (the usual case) is read where it stands; one met more than once (a
    tool schema with a property named ``stream``, say) sends a small body to the parser."""
    try:
        content = request.content
    except Exception:  # noqa: BLE001 - a request whose body cannot be read: no facts, never a broken call
        return RequestFacts(None, False, None)
    model = _requested_model(content)
    stream_at, tier_at = content.find(b'"stream"'), content.find(b'"service_tier"')
    if stream_at < 0 and tier_at < 0:
        return RequestFacts(model, False, None)
    again = (stream_at >= 0 and content.find(b'"stream"', stream_at + 8) >= 0) or (
        tier_at >= 0 and content.find(b'"service_tier"', tier_at + 14) >= 0
    )
    if again and len(content) <= PARSE_LIMIT:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if isinstance(body, dict):
            tier = body.get("service_tier")
            ok = isinstance(tier, str) and _TIER_VALUE.fullmatch(tier) is not None
            return RequestFacts(model, body.get("stream") is True, tier if ok else None)
    stream = tier = None
    if stream_at >= 0 and (found := _STREAM_KEY.match(content, stream_at)) is not None:
        stream = found.group(1) == b"true"
    if tier_at >= 0 and (found := _TIER_KEY.match(content, tier_at)) is not None:
        tier = found.group(1).decode("ascii")
    return RequestFacts(model, bool(stream), tier)


def _requested_model(content: bytes) -> str | None:
    """The request body's ``model``. A body bigger than :data:`PARSE_LIMIT` (a long prompt) is
    scanned for its first ``"model": "…"`` key, so the call path never parses a prompt of
    megabytes; so is any body with ``"model"`` in it only once (the usual case, and the scan
    costs a few per cent of a parse). Others are parsed. (Inside a JSON string a quote is
    escaped, so the pattern only matches a key; in the SDKs' bodies the first such key is the
    top-level one. A body whose only ``"model"`` is nested, with none at the top, is a request
    the API refuses; its error event then names that value as the requested model. The same
    scan finds ``"stream": true`` and ``"service_tier"``.)"""
    try:
        big = len(content) > PARSE_LIMIT
        first = content.find(b'"model"')
        if first >= 0 and (big or content.find(b'"model"', first + 7) < 0):
            # Big, or only one "model" in it: the scan finds what a parse would, far cheaper.
            found = _MODEL_KEY.search(content, first)
            if found:
                value = found.group(1)
                return value[1:-1].decode() if _PLAIN_STRING.fullmatch(value) else json.loads(value)
        if big:
            return None
        body = json.loads(content)
    except Exception:  # noqa: BLE001 - any body that is not JSON: no model
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


PARSE_LIMIT = 64 * 1024
_MODEL_KEY = re.compile(rb'"model"\s*:\s*("(?:[^"\\]|\\.)*")')
_PLAIN_STRING = re.compile(rb'"[ -!#-\[\]-~]*"')  # printable ASCII, no escapes: its JSON value is itself
_STREAM_KEY = re.compile(rb'"stream"\s*:\s*(true|false)')
_TIER_KEY = re.compile(rb'"service_tier"\s*:\s*"([A-Za-z0-9_.-]{1,32})"')
_TIER_VALUE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
