"""What an event target is once resolved: where to send, with which headers and retry limits.

The store resolves targets (``EventStore.delivery_target``); the delivery worker sends to them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_RETRY_ATTEMPTS = 185
DEFAULT_MAX_AGE_SECONDS = 86400


@dataclass(frozen=True)
class HttpTarget:
    """Where and how to send: the API destination and its connection's credentials."""

    url: str
    method: str
    headers: Mapping[str, str]
    signing_key: bytes
    max_attempts: int
    max_age_seconds: float


# (bus, rule, target id, target ARN) -> how to reach the target, or why it cannot be reached.
TargetResolver = Callable[[str, str, str, str], HttpTarget | str]


def connection_headers(
    authorization_type: str, auth: Mapping[str, Any]
) -> tuple[dict[str, str], bytes]:
    """Headers a connection adds, and the secret that signs its deliveries."""
    headers: dict[str, str] = {}
    secret = b""
    if authorization_type == "BASIC":
        basic = auth.get("BasicAuthParameters", {})
        pair = f"{basic.get('Username', '')}:{basic.get('Password', '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        secret = str(basic.get("Password", "")).encode()
    elif authorization_type == "API_KEY":
        api_key = auth.get("ApiKeyAuthParameters", {})
        headers[str(api_key.get("ApiKeyName", "x-api-key"))] = str(api_key.get("ApiKeyValue", ""))
        secret = str(api_key.get("ApiKeyValue", "")).encode()
    for parameter in auth.get("InvocationHttpParameters", {}).get("HeaderParameters", []):
        headers[parameter["Key"]] = parameter["Value"]
    return headers, secret


def retry_limits(spec: Mapping[str, Any] | None) -> tuple[int, float]:
    policy = (spec or {}).get("RetryPolicy") or {}
    return (
        int(policy.get("MaximumRetryAttempts", DEFAULT_RETRY_ATTEMPTS)),
        float(policy.get("MaximumEventAgeInSeconds", DEFAULT_MAX_AGE_SECONDS)),
    )
