"""Problems: every error the service answers is an RFC 9457 ``application/problem+json`` body.

:class:`Problem` is raised by handlers; :func:`problem_response` renders it (and the app's
exception handlers render every other error the same way). ``detail`` is one line that says
what was wrong with the request, never a traceback, a secret or another project's name.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette.responses import Response

__all__ = ["PROBLEM_TYPE", "Problem", "problem_response"]

PROBLEM_TYPE = "application/problem+json"


class Problem(Exception):
    """An HTTP error with a one-line detail (and optional extra members and headers)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, instance: str | None = None, **extra: Any
) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail.splitlines()[0][:300] if detail else HTTPStatus(status).phrase,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return Response(
        json.dumps(body, ensure_ascii=True), status_code=status, headers=headers, media_type=PROBLEM_TYPE
    )
