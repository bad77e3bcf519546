"""The audit trail: CloudTrail records through LookupEvents, filtered, paged, and downloadable.

LookupEvents takes one lookup attribute, as in AWS. When several filters are filled in, the
first of them in :data:`_FILTERS` order goes to LookupEvents and the page applies the others to
what comes back, reading whole LookupEvents pages so that CloudTrail's NextToken still says
where the next page starts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from mlfleet.audit.trail import DATA_EVENT_SOURCE, log_file
from mlfleet.console.app import PREFIX, PageRoute, Visit
from mlfleet.protocol.errors import AwsError

_ROOT = f"{PREFIX}/audit"
# LookupEvents' largest page.
_LOOKUP_PAGE = 50
# A page of the table shows at least this many records unless the trail ends first...
_TABLE_ROWS = 50
# ...and reads at most this many LookupEvents pages for it (each read is itself audited).
_TABLE_READS = 10
# A download holds the matching records among at most this many, newest first.
_EXPORT_READS = 200


@dataclass(frozen=True)
class _Filter:
    param: str  # the query-string name
    label: str
    attribute: str  # the LookupEvents attribute
    values: Callable[[dict[str, Any]], set[str]]  # the event's values for it


# Most selective first: the first one filled in is the one LookupEvents gets.
_FILTERS = (
    _Filter(
        "resource",
        "Resource ARN",
        "ResourceName",
        lambda e: {r.get("ResourceName") or "" for r in e.get("Resources", [])},
    ),
    _Filter("user", "User", "Username", lambda e: {e.get("Username", "")}),
    _Filter("event", "Operation", "EventName", lambda e: {e["EventName"]}),
    _Filter("source", "Event source", "EventSource", lambda e: {e["EventSource"]}),
)


@dataclass
class _Query:
    """The page's filters, as given in its query string."""

    values: dict[str, str]
    start: datetime | None = None
    end: datetime | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, query: Mapping[str, str]) -> _Query:
        names = [f.param for f in _FILTERS] + ["start", "end"]
        found = cls({name: query.get(name, "").strip() for name in names})
        found.start = found._moment("start")
        found.end = found._moment("end")
        return found

    def _moment(self, name: str) -> datetime | None:
        # <input type="datetime-local"> has no time zone: the page says it means UTC.
        text = self.values[name]
        if not text:
            return None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.errors[name] = f"{text!r} is not a date and time (YYYY-MM-DDTHH:MM)."
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    @property
    def chosen(self) -> list[_Filter]:
        return [f for f in _FILTERS if self.values[f.param]]

    @property
    def lookup(self) -> _Filter | None:
        return self.chosen[0] if self.chosen else None

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"MaxResults": _LOOKUP_PAGE}
        if self.lookup is not None:
            params["LookupAttributes"] = [
                {
                    "AttributeKey": self.lookup.attribute,
                    "AttributeValue": self.values[self.lookup.param],
                }
            ]
        # The API's JSON form of a timestamp: seconds since the epoch.
        if self.start is not None:
            params["StartTime"] = self.start.timestamp()
        if self.end is not None:
            params["EndTime"] = self.end.timestamp()
        return params

    def matches(self, event: dict[str, Any]) -> bool:
        return all(self.values[f.param] in f.values(event) for f in self.chosen[1:])

    def link(self, path: str, **extra: str) -> str:
        shown = {k: v for k, v in {**self.values, **extra}.items() if v}
        return f"{path}?{urlencode(shown)}" if shown else path


@dataclass
class _Scan:
    events: list[dict[str, Any]]
    next_token: str | None
    read: int  # records LookupEvents returned, matching or not


def _scan(visit: Visit, query: _Query, token: str | None, rows: int, reads: int) -> _Scan:
    """Whole LookupEvents pages from `token` on, until `rows` match or `reads` are used up."""
    params = query.params()
    events: list[dict[str, Any]] = []
    read = 0
    for _ in range(reads):
        if token:
            params["NextToken"] = token
        page = visit.call("cloudtrail", "LookupEvents", params)
        read += len(page["Events"])
        events += [e for e in page["Events"] if query.matches(e)]
        token = page.get("NextToken")
        if token is None or len(events) >= rows:
            break
    return _Scan(events, token, read)


def _row(event: dict[str, Any]) -> dict[str, Any]:
    record = json.loads(event["CloudTrailEvent"])
    agent = record.get("userAgent") or ""
    return {
        "id": event["EventId"],
        "time": event["EventTime"],
        "user": event.get("Username") or record["userIdentity"].get("type", ""),
        "source": event["EventSource"],
        "name": event["EventName"],
        "resources": [r["ResourceName"] for r in event.get("Resources", []) if r["ResourceName"]],
        "error": record.get("errorCode"),
        "agent": agent,
        "client": agent.split(" ", 1)[0],
    }


def _sources(visit: Visit) -> list[str]:
    return sorted(
        {f"{service}.amazonaws.com" for service in visit.console.services} | {DATA_EVENT_SOURCE}
    )


async def audit_list(visit: Visit) -> web.StreamResponse:
    query = _Query.read(visit.request.query)
    token = visit.request.query.get("token") or None
    scan, refused = None, None
    if not query.errors:
        try:
            scan = _scan(visit, query, token, _TABLE_ROWS, _TABLE_READS)
        except AwsError as exc:
            refused = exc
    return visit.render(
        "audit/list.html",
        query=query,
        filters=_FILTERS,
        sources=_sources(visit),
        rows=[_row(e) for e in scan.events] if scan else [],
        scan=scan,
        refused=refused,
        paged=token is not None,
        older=query.link(_ROOT, token=scan.next_token) if scan and scan.next_token else None,
        newest=query.link(_ROOT),
        export=query.link(f"{_ROOT}/export"),
        page_reads=_TABLE_READS * _LOOKUP_PAGE,
        export_reads=_EXPORT_READS * _LOOKUP_PAGE,
    )


async def event_detail(visit: Visit) -> web.StreamResponse:
    event_id = visit.request.match_info["event_id"]
    try:
        events = visit.call(
            "cloudtrail",
            "LookupEvents",
            {"LookupAttributes": [{"AttributeKey": "EventId", "AttributeValue": event_id}]},
        )["Events"]
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(_ROOT) from None
    if not events:
        visit.flash(f"There is no audit record {event_id}.", "error")
        raise web.HTTPSeeOther(_ROOT)
    event = events[0]
    return visit.render(
        "audit/detail.html",
        row=_row(event),
        document=json.dumps(json.loads(event["CloudTrailEvent"]), indent=2),
    )


def _records(visit: Visit, query: _Query) -> Iterator[dict[str, Any]]:
    scan = _scan(visit, query, None, _EXPORT_READS * _LOOKUP_PAGE, _EXPORT_READS)
    return (json.loads(event["CloudTrailEvent"]) for event in scan.events)


async def export(visit: Visit) -> web.StreamResponse:
    """The filtered records as one CloudTrail log file (gzipped ``{"Records": [...]}``)."""
    query = _Query.read(visit.request.query)
    back = query.link(_ROOT)
    if query.errors:
        visit.flash(" ".join(query.errors.values()), "error")
        raise web.HTTPSeeOther(back)
    try:
        body = log_file(_records(visit, query))
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(back) from None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return web.Response(
        body=body,
        content_type="application/gzip",
        headers={
            "Content-Disposition": f'attachment; filename="mlfleet_CloudTrail_{stamp}.json.gz"'
        },
    )


ROUTES = [
    PageRoute("GET", "/audit", audit_list),
    PageRoute("GET", "/audit/export", export),
    PageRoute("GET", "/audit/events/{event_id}", event_detail),
]
