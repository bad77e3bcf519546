"""MLflow writes as data events: the same record whether the gateway or a worker's fast lane
served the call (the daemon records both)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from mlfleet.audit.trail import DataEvent
from mlfleet.auth.identity import Principal
from mlfleet.common.tags import switched_off
from mlfleet.protocol.sensitive import HIDDEN

# A write's JSON body up to this size is kept in its data event; larger ones are not.
AUDITED_BODY_LIMIT = 4096
DATA_EVENTS_TAG = "mlfleet:data-events"
# Request fields of MLflow's API that carry a secret: the AI gateway's provider keys (its
# protos mark nothing sensitive, so they are named here).
SECRET_FIELDS = frozenset({"secret_value"})


def data_events_on(tags: Sequence[dict[str, str]] | None) -> bool:
    """Whether MLflow writes to a server with these tags are audited (tag
    mlfleet:data-events=off: not); an unknown server (None) counts as audited."""
    return tags is None or not switched_off(tags, DATA_EVENTS_TAG)


def keeps_body(upstream_path: str, length: int | None) -> bool:
    """Whether the event keeps the request body (small, and not an artifact transfer)."""
    path = upstream_path.partition("?")[0]
    return length is not None and length <= AUDITED_BODY_LIMIT and "/mlflow-artifacts/" not in path


def without_secrets(body: Any) -> Any:
    """A request body with the values of its secret fields hidden, at any depth."""
    if isinstance(body, dict):
        return {
            key: HIDDEN if key in SECRET_FIELDS else without_secrets(value)
            for key, value in body.items()
        }
    if isinstance(body, list):
        return [without_secrets(item) for item in body]
    return body


def json_or_none(raw: bytes | None) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def mlflow_error_fields(status: int, answer: bytes | None) -> tuple[str, str | None]:
    """The error code and message of a failed MLflow answer (its JSON, or the HTTP status)."""
    found = json_or_none(answer)
    if isinstance(found, dict) and "error_code" in found:
        return str(found["error_code"]), str(found.get("message", ""))
    return f"HTTP{status}", None


def data_event(
    *,
    principal: Principal,
    action: str,
    resource: str,
    started: float,
    source_ip: str | None,
    user_agent: str,
    method: str,
    upstream_path: str,
    body: bytes | None,
    status: int | None = None,
    answer: bytes | None = None,
    event_id: str | None = None,
) -> DataEvent:
    """A write as forwarded (``status`` None), or its outcome; ``body`` only if kept_body."""
    path, _, query = upstream_path.partition("?")
    parameters: dict[str, Any] = {"httpMethod": method, "path": path}
    if query:
        parameters["queryString"] = query
    if body is not None:
        parameters["body"] = without_secrets(json_or_none(body))
    error_code = error_message = None
    if status is not None and status >= 400:
        error_code, error_message = mlflow_error_fields(status, answer)
    return DataEvent(
        principal=principal,
        action=action,
        resource=resource,
        time=started,
        source_ip=source_ip,
        user_agent=user_agent,
        request_id=str(uuid.uuid4()),
        parameters=parameters,
        status=status,
        error_code=error_code,
        error_message=error_message,
        event_id=event_id,
    )
