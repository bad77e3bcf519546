"""The event bus: events in, matched against rules, one delivery per matching target out.

An event is accepted only once its deliveries are stored (the outbox, ``event_deliveries``):
in the caller's own transaction when it has one (a status change and its event commit
together), otherwise in one of its own, before the call that caused it returns. The delivery
worker (:mod:`mlfleet.events.delivery`) then drains the outbox.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from mlfleet.protocol import jsontext
from mlfleet.protocol.errors import ValidationException
from mlfleet.protocol.shapes import events as shapes
from mlfleet.state.models import EventDelivery

DEFAULT_BUS = "default"
# PutEvents: at most 10 entries, 256 KiB in all (EventBridge's limits).
MAX_ENTRY_BYTES = 256 * 1024


class Matcher(Protocol):
    def matches(self, event: Mapping[str, Any]) -> bool: ...


class Rule(Protocol):
    """An enabled rule as the store hands it out, its pattern compiled."""

    @property
    def name(self) -> str: ...
    @property
    def arn(self) -> str: ...
    @property
    def pattern(self) -> Matcher: ...


@dataclass(frozen=True)
class Event:
    source: str
    detail_type: str
    detail: Mapping[str, Any]
    resources: Sequence[str] = ()
    time: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def envelope(self, account: str, region: str) -> dict[str, Any]:
        """EventBridge's standard envelope."""
        return {
            "version": "0",
            "id": self.id,
            "detail-type": self.detail_type,
            "source": self.source,
            "account": account,
            "time": datetime.fromtimestamp(self.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": region,
            "resources": list(self.resources),
            "detail": dict(self.detail),
        }


# Stores events with the deliveries they cause, in the given transaction (EventBus.publish).
Publish = Callable[[list[Event], Session], int]


# bus name -> its enabled rules, each with its targets' stored specs (EventStore).
RuleSource = Callable[[str], Sequence[tuple[Rule, Sequence[Mapping[str, Any]]]]]


class EventBus:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        rules: RuleSource,
        account_id: str,
        region: str,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._rules = rules
        self._account = account_id
        self._region = region
        self._wake = wake

    @property
    def arn(self) -> str:
        return f"arn:aws:events:{self._region}:{self._account}:event-bus/{DEFAULT_BUS}"

    def set_wake(self, wake: Callable[[], None]) -> None:
        """Who to tell that deliveries are waiting (the delivery worker, once it runs)."""
        self._wake = wake

    def publish(self, events: Iterable[Event], session: Session | None = None) -> int:
        """Store one delivery per (event, matching rule, target); return how many."""
        rows = [row for event in events for row in self._deliveries(event)]
        if not rows:
            return 0
        if session is not None:
            session.add_all(rows)
        else:
            with self._sessions.begin() as own:
                own.add_all(rows)
        self._wake()
        return len(rows)

    def _deliveries(self, event: Event) -> list[EventDelivery]:
        envelope = event.envelope(self._account, self._region)
        now = time.time()
        rows = []
        for rule, targets in self._rules(DEFAULT_BUS):
            if not rule.pattern.matches(envelope):
                continue
            for target in targets:
                rows.append(
                    EventDelivery(
                        bus=DEFAULT_BUS,
                        rule=rule.name,
                        target_id=target["Id"],
                        target_arn=target["Arn"],
                        event_id=event.id,
                        payload=target_input(target, envelope, rule),
                        created_at=now,
                        state="pending",
                        attempts=0,
                        next_attempt_at=now,
                        dead_letter_arn=(target.get("DeadLetterConfig") or {}).get("Arn"),
                    )
                )
        return rows

    # --- PutEvents -----------------------------------------------------------------------------

    def put_events(
        self, req: shapes.PutEventsRequest, _principal: Any = None
    ) -> shapes.PutEventsResponse:
        """Custom events; each entry is refused on its own (FailedEntryCount), as AWS does."""
        results: list[shapes.PutEventsResultEntry] = []
        accepted: list[Event] = []
        for entry in req["Entries"]:
            problem = _entry_problem(entry)
            if problem is not None:
                results.append({"ErrorCode": problem[0], "ErrorMessage": problem[1]})
                continue
            bus = entry.get("EventBusName", DEFAULT_BUS)
            if bus not in (DEFAULT_BUS, self.arn):
                results.append(
                    {
                        "ErrorCode": "ResourceNotFoundException",
                        "ErrorMessage": f"Event bus {bus} does not exist.",
                    }
                )
                continue
            moment = entry.get("Time")
            event = Event(
                source=entry["Source"],
                detail_type=entry["DetailType"],
                detail=json.loads(entry["Detail"]),
                resources=entry.get("Resources", []),
                time=moment.timestamp() if moment is not None else time.time(),
            )
            accepted.append(event)
            results.append({"EventId": event.id})
        self.publish(accepted)
        failed = sum(1 for r in results if "ErrorCode" in r)
        return {"FailedEntryCount": failed, "Entries": results}


def _entry_problem(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    for member in ("Source", "DetailType", "Detail"):
        if not entry.get(member):
            return (
                "InvalidArgument",
                f"Parameter {member} is not valid. Reason: {member} is missing.",
            )
    try:
        detail = jsontext.loads(entry["Detail"])
    except ValueError:
        return "MalformedDetail", "Detail is malformed."
    if not isinstance(detail, dict):
        return "MalformedDetail", "Detail is malformed: it must be a JSON object."
    if len(json.dumps(entry, default=str)) > MAX_ENTRY_BYTES:
        return "InvalidArgument", f"Entry is larger than {MAX_ENTRY_BYTES} bytes."
    return None


# --- input transformation (Target.Input / InputPath / InputTransformer) --------------------------

_PATH_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_PLACEHOLDER = re.compile(r"<([A-Za-z0-9_.\-]+)>")


def json_path(document: Any, path: str) -> Any:
    """The value at a JSONPath of EventBridge's simple form ($, $.a.b, $.a[0]); None if absent."""
    if not path.startswith("$"):
        raise ValidationException(f"InputPath {path} must start with $.")
    value = document
    for match in _PATH_STEP.finditer(path[1:]):
        key, index = match.groups()
        if key is not None:
            value = value.get(key) if isinstance(value, Mapping) else None
        else:
            value = (
                value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
            )
        if value is None:
            return None
    return value


def target_input(target: Mapping[str, Any], envelope: Mapping[str, Any], rule: Rule) -> str:
    """What a target receives: the event, or what its Input* members make of it."""
    if "Input" in target:
        return str(target["Input"])
    if "InputPath" in target:
        return json.dumps(json_path(envelope, target["InputPath"]))
    transformer = target.get("InputTransformer")
    if transformer:
        values: dict[str, Any] = {
            name: json_path(envelope, path)
            for name, path in (transformer.get("InputPathsMap") or {}).items()
        }
        values.update(
            {
                "aws.events.rule-arn": rule.arn,
                "aws.events.rule-name": rule.name,
                "aws.events.event": envelope,
                "aws.events.event.json": envelope,
                "aws.events.event.ingestion-time": envelope["time"],
            }
        )
        return _fill_template(transformer["InputTemplate"], values)
    return json.dumps(envelope)


def _fill_template(template: str, values: Mapping[str, Any]) -> str:
    """EventBridge's placeholders: inside a JSON string the value's text, elsewhere its JSON."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            return match.group(0)
        value = values[name]
        before = template[: match.start()]
        in_string = before.count('"') % 2 == 1
        if in_string:
            text = value if isinstance(value, str) else json.dumps(value)
            return json.dumps(text)[1:-1]
        return json.dumps(value)

    return _PLACEHOLDER.sub(replace, template)
