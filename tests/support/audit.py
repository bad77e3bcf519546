"""The audit trail for tests: data events as CloudTrail's LookupEvents returns them."""

from __future__ import annotations

import json
from typing import Any

from support.daemon import Daemon


def data_events(daemon: Daemon, action: str, server_arn: str) -> list[dict[str, Any]]:
    found = daemon.client("cloudtrail").lookup_events(
        LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": action}], MaxResults=50
    )["Events"]
    records = [json.loads(e["CloudTrailEvent"]) for e in found]
    return [r for r in records if r["resources"][0]["ARN"] == server_arn]


def logged_metric(daemon: Daemon, arn: str, metric: str) -> list[dict[str, Any]]:
    """The LogMetric data events of this metric on that server."""
    return [
        r
        for r in data_events(daemon, "LogMetric", arn)
        if (r["requestParameters"].get("body") or {}).get("key") == metric
    ]
