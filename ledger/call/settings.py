"""Settings: a wrapper client's route, credentials and defaults, and the request of one call.

:class:`Settings` resolves, once per client, the project, the route (direct to Cerebras, or
through Lava's forward proxy when a forward token is set), the credentials and the URL and
headers of each endpoint; :meth:`Settings.build` makes the ``httpx.Request`` every attempt of a
call sends as is. Shared by :mod:`ledger.call.client` and :mod:`ledger.call.aclient`, with the
two small helpers both clients use: :func:`attach` (a transport error gets its request, as
``httpx.Client`` does) and :func:`timeout_dict` (a timeout as the transport takes it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from ledger._version import __version__
from ledger.call.transport import CALL_OPTIONS, CallOptions
from ledger.config import ConfigError, check_project

__all__ = ["DEFAULT_TIMEOUT", "Settings", "attach", "timeout_dict"]

DEFAULT_BASE_URL = "https://api.cerebras.ai"
DEFAULT_LAVA_BASE_URL = "https://api.lava.so"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class Settings:
    """Route, credentials and defaults, resolved once: arguments first, then the environment."""

    def __init__(
        self,
        project: str | None,
        api_key: str | None,
        base_url: str | None,
        lava_forward_token: str | None,
        lava_base_url: str | None,
    ) -> None:
        env = os.environ
        self.project = check_project(project or env.get("LEDGER_PROJECT"))
        self.base_url = (base_url or env.get("CEREBRAS_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.forward_token = lava_forward_token or env.get("LAVA_FORWARD_TOKEN") or None
        self.lava_base_url = (lava_base_url or env.get("LAVA_BASE_URL") or DEFAULT_LAVA_BASE_URL).rstrip("/")
        self.api_key = api_key or env.get("CEREBRAS_API_KEY") or None
        if self.forward_token is None and self.api_key is None:
            raise ConfigError(
                "no credentials: pass api_key=... or set CEREBRAS_API_KEY "
                "(or LAVA_FORWARD_TOKEN to go through Lava)"
            )
        secret = self.forward_token or self.api_key or ""
        # one URL per endpoint the client offers (see ledger.events.ENDPOINT_PATHS)
        self.urls = {path: httpx.URL(self._url(path)) for path in ("chat/completions", "completions")}
        self.url = str(self.urls["chat/completions"])
        self.parsed_url = self.urls["chat/completions"]
        self.headers = {
            "authorization": f"Bearer {secret}",
            "content-type": "application/json",
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "user-agent": f"cerebras-ledger/{__version__}",
        }

    def _url(self, path: str) -> str:
        target = f"{self.base_url}/v1/{path}"
        if self.forward_token:
            return f"{self.lava_base_url}/v1/forward?u={quote(target, safe='')}"
        return target

    @property
    def route(self) -> str:
        return "lava" if self.forward_token else "cerebras"

    def build(
        self,
        model: str,
        messages: Any,
        stream: bool,
        extra_headers: Mapping[str, str] | None,
        timeout: dict[str, float | None],
        tags: Mapping[str, Any] | None,
        project: str | None,
        params: dict[str, Any],
        *,
        path: str = "chat/completions",
        input_key: str = "messages",
    ) -> httpx.Request:
        """The request of one call (sent as is by every attempt of it): a chat completion, or
        with ``path="completions", input_key="prompt"`` a legacy text completion."""
        body: dict[str, Any] = {"model": model, input_key: messages, **params}
        if stream:
            body["stream"] = True
        headers = dict(self.headers)
        if stream:
            headers["accept"] = "text/event-stream"
        if extra_headers:
            headers.update(extra_headers)
        options: CallOptions = {
            "project": check_project(project) if project else None,
            "tags": tags,
            "model": model,
        }
        ext = {CALL_OPTIONS: options, "timeout": timeout}
        return httpx.Request(
            "POST", self.urls[path], content=json.dumps(body).encode(), headers=headers, extensions=ext
        )


def attach(exc: httpx.RequestError, request: httpx.Request) -> None:
    """Give a transport error its request, as ``httpx.Client`` does (callers read ``exc.request``)."""
    try:
        exc.request  # noqa: B018 - the property raises when unset
    except RuntimeError:
        exc.request = request


def timeout_dict(value: Any) -> dict[str, float | None]:
    """A timeout (seconds, an ``httpx.Timeout`` or ``None`` for none) as the transport takes it."""
    return httpx.Timeout(value).as_dict()
