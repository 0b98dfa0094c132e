"""Testing wire: what the stand-in upstream (:mod:`ledger.testing`) says, scenario by scenario.

The scenario names (:data:`SCENARIOS`, described in :mod:`ledger.testing`) and the canned parts
of the answers, in the wire format of ``shared/wire``: the flat error bodies of the error
scenarios (:data:`ERRORS`), the public price feed (:data:`DEFAULT_FEED`), the usage of a request
(:func:`usage_for`, spoiled as a scenario wants by :func:`scenario_usage`), its ``time_info``
(:func:`time_info`), and which scenarios never deliver a valid usage (:data:`SPOILED_USAGE`).
How the answers are served (framing, streaming, hang-ups) stays with the request handler in
:mod:`ledger.testing`. Standard library only, like every foundation.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = [
    "ABSURD_STATUS",
    "ABSURD_TOKENS",
    "DEFAULT_FEED",
    "ERRORS",
    "SCENARIOS",
    "SPOILED_USAGE",
    "scenario_usage",
    "time_info",
    "usage_for",
]

SCENARIOS = (
    "ok",
    "rate_limit",
    "token_quota",
    "server_error",
    "wrong_key",
    "not_found",
    "no_done",
    "stream_error",
    "cut",
    "no_usage",
    "malformed",
    "non_utf8",
    "negative_usage",
    "gzip",
    "slow",
    "hang",
    "cached",
    "reset",
    "absurd_usage",
    "stall",
    "truncated",
    "stream_error_text",
    "absurd_status",
)

ABSURD_TOKENS = 10**15  # "absurd_usage": far beyond any real completion
ABSURD_STATUS = 2**64  # "absurd_status": the status_code of its in-stream error event (fits no SQL integer)

DEFAULT_FEED: dict[str, Any] = {
    "object": "list",
    "data": [
        {
            "id": "gpt-oss-120b",
            "object": "model",
            "pricing": {"prompt": "0.00000035", "completion": "0.00000075"},
            "deprecated": False,
            "preview": False,
        },
    ],
}

ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "wrong_key": (
        401,
        {
            "message": "Wrong API Key",
            "type": "invalid_request_error",
            "param": "api_key",
            "code": "wrong_api_key",
        },
    ),
    "not_found": (
        404,
        {
            "message": "Model does not exist or you do not have access to it.",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        },
    ),
    "rate_limit": (
        429,
        {
            "message": "We're experiencing high traffic right now! Please try again soon.",
            "type": "too_many_requests_error",
            "param": "queue",
            "code": "queue_exceeded",
        },
    ),
    "token_quota": (
        429,
        {
            "message": "Tokens per minute limit exceeded - too many tokens processed.",
            "type": "too_many_tokens_error",
            "param": "quota",
            "code": "token_quota_exceeded",
        },
    ),
    "server_error": (
        500,
        {"message": "Internal server error", "type": "server_error", "param": "", "code": "internal_error"},
    ),
}


def usage_for(body: dict[str, Any], scenario: str) -> dict[str, Any]:
    """Deterministic usage for a request: prompt tokens from its words, completion from max_tokens."""
    words = 0
    for m in body.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            words += len(content.split())
    prompt = 10 + words
    completion = int(body.get("max_tokens") or body.get("max_completion_tokens") or 12)
    model = str(body.get("model", ""))
    reasoning = completion // 3 if model.startswith("gpt-oss") else 0
    cached = prompt // 2 if scenario == "cached" else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
            "reasoning_tokens": reasoning,
        },
    }


def time_info(scenario: str = "ok") -> dict[str, float]:
    if scenario == "absurd_usage":
        return {
            "queue_time": -1.0,
            "prompt_time": 1e300,
            "completion_time": 10.0**15,
            "total_time": 2.0**70,
            "created": time.time(),
        }
    return {
        "queue_time": 0.000533844,
        "prompt_time": 0.00128098,
        "completion_time": 0.003694258,
        "total_time": 0.007519960403442383,
        "created": time.time(),
    }


def scenario_usage(body: dict[str, Any], scenario: str) -> dict[str, Any]:
    """:func:`usage_for`, spoiled as the ``negative_usage`` / ``absurd_usage`` scenarios want."""
    usage = usage_for(body, scenario)
    if scenario == "negative_usage":
        usage["prompt_tokens"] = -5
    elif scenario == "absurd_usage":
        usage.update(
            prompt_tokens=ABSURD_TOKENS, completion_tokens=ABSURD_TOKENS, total_tokens=2 * ABSURD_TOKENS
        )
    return usage


# scenarios whose usage never validly reaches the client: not in ``served``
SPOILED_USAGE = ("no_usage", "negative_usage", "absurd_usage")
