"""EventBridge's management API: rules, targets, connections, API destinations.

Each public method named after an operation is that operation's behaviour: it takes the
operation's (already validated) input and returns its output members, as
``mlfleet.events.responses`` serializes them; refusals use EventBridge's error codes and wording.

mlfleet has one event bus, "default", and delivers only to API destinations (HTTP endpoints
called with a connection's credentials). Connection auth parameters hold secrets: they are stored
sealed (``mlfleet.auth.secrets``) and never answered back.

The bus reads rules on every event, so :meth:`EventStore.rules_with_targets` answers from a cache
of compiled patterns that every rule or target write drops.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth.secrets import SecretBox
from mlfleet.common.paging import EVENTBRIDGE, page_by_key
from mlfleet.common.time import when
from mlfleet.events.egress import OwnAddress
from mlfleet.events.pattern import EventPattern, parse_pattern
from mlfleet.events.targets import HttpTarget, connection_headers, retry_limits
from mlfleet.protocol import jsontext
from mlfleet.protocol.errors import AwsError, NamedAwsError, ValidationException
from mlfleet.protocol.shapes import events as shapes
from mlfleet.state.models import ApiDestination, EventConnection, EventRule, EventTarget

log = logging.getLogger(__name__)

DEFAULT_BUS = "default"
# EventBridge's quotas: targets per rule (fixed), rules per bus (the default quota).
MAX_TARGETS_PER_RULE = 5
MAX_RULES_PER_BUS = 300
# What AWS gives an API destination that does not say.
DEFAULT_RATE_LIMIT_PER_SECOND = 300
ENABLED_STATES = frozenset({"ENABLED", "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"})
# The members of an event TestEventPattern insists on, as AWS does.
REQUIRED_EVENT_MEMBERS = ("id", "account", "source", "time", "region", "resources", "detail-type")
# AuthorizationType -> the AuthParameters member that carries its credentials, and its fields.
AUTH_MEMBERS: dict[str, tuple[str, tuple[str, str]]] = {
    "BASIC": ("BasicAuthParameters", ("Username", "Password")),
    "API_KEY": ("ApiKeyAuthParameters", ("ApiKeyName", "ApiKeyValue")),
}
# The non-secret field of each, the one DescribeConnection shows.
PUBLIC_AUTH_FIELDS = {"BasicAuthParameters": "Username", "ApiKeyAuthParameters": "ApiKeyName"}
OAUTH = "OAUTH_CLIENT_CREDENTIALS"

Output = dict[str, Any]


# --- errors, as EventBridge names them (and ValidationException, shared with SageMaker) ----------


class ResourceNotFoundException(NamedAwsError):
    pass


class ResourceAlreadyExistsException(NamedAwsError):
    pass


class LimitExceededException(NamedAwsError):
    pass


class ConcurrentModificationException(NamedAwsError):
    pass


# --- what the bus and the delivery worker read ---------------------------------------------


@dataclass(frozen=True)
class CompiledRule:
    """An enabled rule as the bus matches events against it."""

    bus: str
    name: str
    arn: str
    state: str
    event_pattern: str
    pattern: EventPattern


ActiveRules = list[tuple[CompiledRule, list[dict[str, Any]]]]


@functools.lru_cache(maxsize=1024)
def compiled(text: str) -> EventPattern:
    """A pattern, compiled once per text: rewriting one rule does not recompile the others."""
    return parse_pattern(text)


class EventStore:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        account_id: str,
        region: str,
        box: SecretBox,
        own: OwnAddress,
    ) -> None:
        self._own = own
        self._sessions = sessions
        self._account = account_id
        self._region = region
        self._box = box
        # The caches of rules_with_targets and delivery_target. A load that raced a write must
        # not be cached: the write bumps the generation, and a load only stores its result if
        # the generation held.
        self._lock = threading.Lock()
        self._generation = 0
        self._active: dict[str, ActiveRules] = {}
        self._delivery_targets: dict[tuple[str, str, str, str], HttpTarget | str] = {}

    # --- ARNs --------------------------------------------------------------------------------

    def _arn(self, resource: str) -> str:
        return f"arn:aws:events:{self._region}:{self._account}:{resource}"

    @property
    def bus_arn(self) -> str:
        return self._arn(f"event-bus/{DEFAULT_BUS}")

    def rule_arn(self, name: str) -> str:
        # Rules on the default bus have no bus in their ARN (others have rule/<bus>/<name>).
        return self._arn(f"rule/{name}")

    def connection_arn_for(self, name: str) -> str:
        """The connection's ARN; for one that does not exist (yet), ``connection/<name>/*``, so
        policies on ``connection/<name>/*`` or ``connection/*`` govern its creation."""
        with self._sessions() as session:
            row = session.get(EventConnection, name)
        return row.arn if row is not None else self._arn(f"connection/{name}/*")

    def api_destination_arn_for(self, name: str) -> str:
        """As :meth:`connection_arn_for`, for an API destination."""
        with self._sessions() as session:
            row = session.get(ApiDestination, name)
        return row.arn if row is not None else self._arn(f"api-destination/{name}/*")

    def _bus(self, req: Mapping[str, Any]) -> str:
        """The bus a request names (by name or ARN): only "default" exists."""
        given = req.get("EventBusName", DEFAULT_BUS)
        if given in (DEFAULT_BUS, self.bus_arn):
            return DEFAULT_BUS
        raise ResourceNotFoundException(
            f"Event bus {given.rsplit('event-bus/', 1)[-1]} does not exist."
        )

    # --- writing -----------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """A write transaction; two requests racing to create one name answer as AWS does.

        Every write of a rule, target, connection or destination comes through here, so here
        the caches of what they resolve to are dropped.
        """
        try:
            with self._sessions.begin() as session:
                yield session
        except IntegrityError:
            raise ConcurrentModificationException(
                "Another request changed this resource at the same time; retry.",
            ) from None
        finally:
            self._changed()

    def _changed(self) -> None:
        """A rule, target, connection or API destination was written: drop what was cached."""
        with self._lock:
            self._generation += 1
            self._active.clear()
            self._delivery_targets.clear()

    # --- rules -------------------------------------------------------------------------------

    def put_rule(self, req: shapes.PutRuleRequest) -> shapes.PutRuleResponse:
        """Create the rule, or replace it whole (its targets and tags stay), as AWS does."""
        bus, name = self._bus(req), req["Name"]
        if "ScheduleExpression" in req:
            raise ValidationException(
                "Scheduled rules (ScheduleExpression) are not supported by mlfleet: "
                "give the rule an EventPattern."
            )
        text = req.get("EventPattern")
        if text is None:
            raise ValidationException("Parameter(s) EventPattern must be specified.")
        compiled(text)  # refuses a bad pattern with InvalidEventPatternException
        with self._writing() as session:
            rule = session.get(EventRule, (bus, name))
            if rule is None:
                self._check_rule_quota(session, bus)
                rule = EventRule(
                    bus=bus,
                    name=name,
                    arn=self.rule_arn(name),
                    created_by=self._account,
                    tags=req.get("Tags", []),
                )
                session.add(rule)
            rule.event_pattern = text
            rule.schedule_expression = None
            rule.state = req.get("State", "ENABLED")
            rule.description = req.get("Description")
            rule.role_arn = req.get("RoleArn")
        return {"RuleArn": rule.arn}

    def _check_rule_quota(self, session: Session, bus: str) -> None:
        count = session.scalar(
            select(func.count()).select_from(EventRule).where(EventRule.bus == bus)
        )
        if (count or 0) >= MAX_RULES_PER_BUS:
            raise LimitExceededException(
                f"The requested resource exceeds the maximum number allowed: an event bus can "
                f"have at most {MAX_RULES_PER_BUS} rules."
            )

    def describe_rule(self, req: shapes.DescribeRuleRequest) -> shapes.DescribeRuleResponse:
        bus = self._bus(req)
        with self._sessions() as session:
            rule = self._rule(session, bus, req["Name"])
        return {**_rule(rule), "CreatedBy": rule.created_by}

    def describe_event_bus(
        self, req: shapes.DescribeEventBusRequest
    ) -> shapes.DescribeEventBusResponse:
        """Only the default bus exists, with no resource policy of its own."""
        self._bus({"EventBusName": req.get("Name", DEFAULT_BUS)})
        return {"Name": DEFAULT_BUS, "Arn": self.bus_arn}

    def list_rules(self, req: shapes.ListRulesRequest) -> shapes.ListRulesResponse:
        bus, prefix = self._bus(req), req.get("NamePrefix", "")
        with self._sessions() as session:
            rules = session.scalars(
                select(EventRule).where(EventRule.bus == bus).order_by(EventRule.name)
            ).all()
        page, token = page_by_key(
            [r for r in rules if r.name.startswith(prefix)], req, EVENTBRIDGE, _name
        )
        # NextToken is None on the last page (left out of the answer, null in its audit record).
        return {"Rules": [_rule(r) for r in page], "NextToken": token}  # type: ignore[typeddict-item]

    def enable_rule(self, req: shapes.EnableRuleRequest) -> Output:
        return self._set_state(req, "ENABLED")

    def disable_rule(self, req: shapes.DisableRuleRequest) -> Output:
        return self._set_state(req, "DISABLED")

    def _set_state(self, req: Mapping[str, Any], state: str) -> Output:
        bus = self._bus(req)
        with self._writing() as session:
            self._rule(session, bus, req["Name"]).state = state
        return {}

    def delete_rule(self, req: shapes.DeleteRuleRequest) -> Output:
        """Deleting a rule that does not exist succeeds, as in AWS. One with targets is refused
        unless Force, which here also removes its targets."""
        bus, name = self._bus(req), req["Name"]
        with self._writing() as session:
            rule = session.get(EventRule, (bus, name))
            if rule is None:
                return {}
            targets = self._targets(session, bus, name)
            if targets and not req.get("Force", False):
                raise ValidationException("Rule can't be deleted since it has targets.")
            for target in targets:
                session.delete(target)
            session.delete(rule)
        return {}

    def rule_tags(self, name: str) -> list[dict[str, str]]:
        """The tags of a rule on the default bus (none if it does not exist), for authorization."""
        with self._sessions() as session:
            rule = session.get(EventRule, (DEFAULT_BUS, name))
        return list(rule.tags) if rule is not None else []

    def _rule(self, session: Session, bus: str, name: str) -> EventRule:
        rule = session.get(EventRule, (bus, name))
        if rule is None:
            raise ResourceNotFoundException(f"Rule {name} does not exist on EventBus {bus}.")
        return rule

    # --- targets -----------------------------------------------------------------------------

    def put_targets(self, req: shapes.PutTargetsRequest) -> shapes.PutTargetsResponse:
        """Add or replace targets; a bad entry fails alone (FailedEntries), as in AWS."""
        bus, name = self._bus(req), req["Rule"]
        entries = req["Targets"]
        ids = [entry["Id"] for entry in entries]
        if len(set(ids)) != len(ids):
            raise ValidationException("Target ids must be unique within one PutTargets request.")
        failed: list[shapes.PutTargetsResultEntry] = []
        with self._writing() as session:
            self._rule(session, bus, name)
            accepted = []
            for entry in entries:
                problem = self._target_problem(session, entry)
                if problem is None:
                    accepted.append(entry)
                else:
                    code, message = problem
                    failed.append(
                        {"TargetId": entry["Id"], "ErrorCode": code, "ErrorMessage": message}
                    )
            existing = {t.target_id: t for t in self._targets(session, bus, name)}
            if len(existing.keys() | {entry["Id"] for entry in accepted}) > MAX_TARGETS_PER_RULE:
                raise LimitExceededException(
                    f"The requested resource exceeds the maximum number allowed: a rule can "
                    f"have at most {MAX_TARGETS_PER_RULE} targets."
                )
            for entry in accepted:
                target = existing.get(entry["Id"])
                if target is None:
                    target = EventTarget(bus=bus, rule=name, target_id=entry["Id"])
                    session.add(target)
                target.arn = entry["Arn"]
                target.spec = dict(entry)
        return {"FailedEntryCount": len(failed), "FailedEntries": failed}

    def _target_problem(self, session: Session, entry: Mapping[str, Any]) -> tuple[str, str] | None:
        """Why mlfleet cannot take this target (error code, message), or None."""
        arn = entry["Arn"]
        pattern = re.escape(self._arn("api-destination/")) + r"([.\-_A-Za-z0-9]+)/[\-A-Za-z0-9]+"
        match = re.fullmatch(pattern, arn)
        if match is None:
            return (
                "ValidationException",
                f"Target {arn} is not supported by mlfleet: targets must be API destinations "
                f"({self._arn('api-destination/<name>/<id>')}).",
            )
        destination = session.get(ApiDestination, match.group(1))
        if destination is None or destination.arn != arn:
            return "ResourceNotFoundException", f"API destination {arn} does not exist."
        return _input_problem(entry)

    def remove_targets(self, req: shapes.RemoveTargetsRequest) -> shapes.RemoveTargetsResponse:
        """Remove these targets; ids the rule does not have are ignored."""
        bus, name = self._bus(req), req["Rule"]
        with self._writing() as session:
            self._rule(session, bus, name)
            for target in self._targets(session, bus, name):
                if target.target_id in req["Ids"]:
                    session.delete(target)
        return {"FailedEntryCount": 0, "FailedEntries": []}

    def list_targets_by_rule(
        self, req: shapes.ListTargetsByRuleRequest
    ) -> shapes.ListTargetsByRuleResponse:
        bus, name = self._bus(req), req["Rule"]
        with self._sessions() as session:
            self._rule(session, bus, name)
            targets = self._targets(session, bus, name)
        page, token = page_by_key(targets, req, EVENTBRIDGE, lambda t: t.target_id)
        # A spec is the Target PutTargets stored; NextToken is as in list_rules.
        specs = [cast(shapes.Target, dict(t.spec)) for t in page]
        return {"Targets": specs, "NextToken": token}  # type: ignore[typeddict-item]

    def _targets(self, session: Session, bus: str, rule: str) -> list[EventTarget]:
        return list(
            session.scalars(
                select(EventTarget)
                .where(EventTarget.bus == bus, EventTarget.rule == rule)
                .order_by(EventTarget.target_id)
            )
        )

    # --- connections -------------------------------------------------------------------------

    def create_connection(
        self, req: shapes.CreateConnectionRequest
    ) -> shapes.CreateConnectionResponse:
        name, kind = req["Name"], req["AuthorizationType"]
        _refuse_unsupported_connection(req)
        auth = req["AuthParameters"]
        _check_auth(kind, auth)
        now = time.time()
        with self._writing() as session:
            if session.get(EventConnection, name) is not None:
                raise ResourceAlreadyExistsException(f"Connection {name} already exists.")
            connection = EventConnection(
                name=name,
                arn=self._arn(f"connection/{name}/{uuid.uuid4()}"),
                authorization_type=kind,
                auth_parameters=self._box.seal(json.dumps(auth)),
                description=req.get("Description"),
                # No authorization endpoint to call (no OAuth): the credentials are usable now.
                state="AUTHORIZED",
                created_at=now,
                updated_at=now,
            )
            session.add(connection)
        return _connection_times(connection)

    def update_connection(
        self, req: shapes.UpdateConnectionRequest
    ) -> shapes.UpdateConnectionResponse:
        """Change the description, authorization type or parameters; the parameters given are
        merged into the stored ones (AWS keeps a secret that an update leaves out)."""
        name = req["Name"]
        _refuse_unsupported_connection(req)
        with self._writing() as session:
            connection = self._connection(session, name)
            kind = req.get("AuthorizationType", connection.authorization_type)
            auth = _merged_auth(
                json.loads(self._box.open(connection.auth_parameters)),
                req.get("AuthParameters", {}),
                kind,
            )
            _check_auth(kind, auth)
            connection.authorization_type = kind
            connection.auth_parameters = self._box.seal(json.dumps(auth))
            if "Description" in req:
                connection.description = req["Description"]
            connection.updated_at = time.time()
        return _connection_times(connection)

    def describe_connection(
        self, req: shapes.DescribeConnectionRequest
    ) -> shapes.DescribeConnectionResponse:
        with self._sessions() as session:
            connection = self._connection(session, req["Name"])
        auth = json.loads(self._box.open(connection.auth_parameters))
        # Member by member: unpacking a Connection would leave the answer's other optional
        # members (StateReason, SecretArn, ...) unaccounted for.
        return {
            "ConnectionArn": connection.arn,
            "ConnectionState": connection.state,
            "CreationTime": when(connection.created_at),
            "LastModifiedTime": when(connection.updated_at),
            "LastAuthorizedTime": when(connection.updated_at),
            "Name": connection.name,
            "AuthorizationType": connection.authorization_type,
            "Description": connection.description,  # type: ignore[typeddict-item]
            "AuthParameters": _public_auth(auth),
        }

    def list_connections(
        self, req: shapes.ListConnectionsRequest
    ) -> shapes.ListConnectionsResponse:
        prefix, state = req.get("NamePrefix", ""), req.get("ConnectionState")
        with self._sessions() as session:
            rows = session.scalars(select(EventConnection).order_by(EventConnection.name)).all()
        chosen = [c for c in rows if c.name.startswith(prefix) and state in (None, c.state)]
        page, token = page_by_key(chosen, req, EVENTBRIDGE, _name)
        return {"Connections": [_connection(c) for c in page], "NextToken": token}  # type: ignore[typeddict-item]

    def delete_connection(
        self, req: shapes.DeleteConnectionRequest
    ) -> shapes.DeleteConnectionResponse:
        """Delete it; API destinations that use it fail their deliveries until pointed at
        another connection (as in AWS, nothing refuses the delete)."""
        with self._writing() as session:
            connection = self._connection(session, req["Name"])
            session.delete(connection)
        return {**_connection_times(connection), "ConnectionState": "DELETING"}

    def _connection(self, session: Session, name: str) -> EventConnection:
        connection = session.get(EventConnection, name)
        if connection is None:
            raise ResourceNotFoundException(
                f"Failed to describe the connection(s). Connection '{name}' does not exist."
            )
        return connection

    def _connection_by_arn(self, session: Session, arn: str) -> EventConnection | None:
        return session.scalars(select(EventConnection).where(EventConnection.arn == arn)).first()

    # --- API destinations --------------------------------------------------------------------

    def _checked_endpoint(self, url: str) -> str:
        """An http(s) URL with a host, not mlfleet's own (events.egress). Unlike AWS, plain http
        and loopback hosts are allowed: the receivers of a self-hosted daemon often run beside
        it."""
        try:
            parts = urlsplit(url)
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # a malformed port or IPv6 host
            usable = False
        if not usable:
            raise ValidationException(
                f"InvocationEndpoint {url} is not valid: it must be an http:// or https:// URL "
                "with a host."
            )
        if self._own.names_me(url):
            raise ValidationException(
                f"InvocationEndpoint {url} is not valid: it is this mlfleet's own address, and "
                "events are not delivered to mlfleet itself."
            )
        return url

    def create_api_destination(
        self, req: shapes.CreateApiDestinationRequest
    ) -> shapes.CreateApiDestinationResponse:
        name = req["Name"]
        endpoint = self._checked_endpoint(req["InvocationEndpoint"])
        now = time.time()
        with self._writing() as session:
            if session.get(ApiDestination, name) is not None:
                raise ResourceAlreadyExistsException(f"An api-destination '{name}' already exists.")
            self._require_connection(session, req["ConnectionArn"])
            destination = ApiDestination(
                name=name,
                arn=self._arn(f"api-destination/{name}/{uuid.uuid4()}"),
                connection_arn=req["ConnectionArn"],
                invocation_endpoint=endpoint,
                http_method=req["HttpMethod"],
                rate_limit_per_second=req.get(
                    "InvocationRateLimitPerSecond", DEFAULT_RATE_LIMIT_PER_SECOND
                ),
                description=req.get("Description"),
                state="ACTIVE",
                created_at=now,
                updated_at=now,
            )
            session.add(destination)
        return _destination_times(destination)

    def update_api_destination(
        self, req: shapes.UpdateApiDestinationRequest
    ) -> shapes.UpdateApiDestinationResponse:
        with self._writing() as session:
            destination = self._api_destination(session, req["Name"])
            if "ConnectionArn" in req:
                self._require_connection(session, req["ConnectionArn"])
                destination.connection_arn = req["ConnectionArn"]
            if "InvocationEndpoint" in req:
                destination.invocation_endpoint = self._checked_endpoint(req["InvocationEndpoint"])
            if "HttpMethod" in req:
                destination.http_method = req["HttpMethod"]
            if "InvocationRateLimitPerSecond" in req:
                destination.rate_limit_per_second = req["InvocationRateLimitPerSecond"]
            if "Description" in req:
                destination.description = req["Description"]
            destination.updated_at = time.time()
        return _destination_times(destination)

    def describe_api_destination(
        self, req: shapes.DescribeApiDestinationRequest
    ) -> shapes.DescribeApiDestinationResponse:
        with self._sessions() as session:
            destination = self._api_destination(session, req["Name"])
        return {**_destination(destination), "Description": destination.description}  # type: ignore[typeddict-item]

    def list_api_destinations(
        self, req: shapes.ListApiDestinationsRequest
    ) -> shapes.ListApiDestinationsResponse:
        prefix, connection = req.get("NamePrefix", ""), req.get("ConnectionArn")
        with self._sessions() as session:
            rows = session.scalars(select(ApiDestination).order_by(ApiDestination.name)).all()
        chosen = [
            d for d in rows if d.name.startswith(prefix) and connection in (None, d.connection_arn)
        ]
        page, token = page_by_key(chosen, req, EVENTBRIDGE, _name)
        return {"ApiDestinations": [_destination(d) for d in page], "NextToken": token}  # type: ignore[typeddict-item]

    def delete_api_destination(
        self, req: shapes.DeleteApiDestinationRequest
    ) -> shapes.DeleteApiDestinationResponse:
        """Delete it; targets that name it dead-letter their deliveries (as in AWS, nothing
        refuses the delete)."""
        with self._writing() as session:
            session.delete(self._api_destination(session, req["Name"]))
        return {}

    def _api_destination(self, session: Session, name: str) -> ApiDestination:
        destination = session.get(ApiDestination, name)
        if destination is None:
            raise ResourceNotFoundException(
                "Failed to describe the api-destination(s). "
                f"An api-destination '{name}' does not exist."
            )
        return destination

    def _require_connection(self, session: Session, arn: str) -> None:
        if self._connection_by_arn(session, arn) is None:
            name = arn.split("connection/", 1)[-1].split("/", 1)[0]
            raise ResourceNotFoundException(
                f"Failed to describe the connection(s). Connection '{name}' does not exist."
            )

    # --- TestEventPattern --------------------------------------------------------------------

    def test_event_pattern(
        self, req: shapes.TestEventPatternRequest
    ) -> shapes.TestEventPatternResponse:
        pattern = compiled(req["EventPattern"])
        try:
            event = jsontext.loads(req["Event"])
        except ValueError:
            raise ValidationException("Parameter Event is not valid: it is not JSON.") from None
        if not isinstance(event, dict):
            raise ValidationException("Parameter Event is not valid: it must be a JSON object.")
        missing = [member for member in REQUIRED_EVENT_MEMBERS if member not in event]
        if missing:
            raise ValidationException(
                f"Parameter Event is not valid: it lacks the member(s) {', '.join(missing)}."
            )
        return {"Result": bool(pattern.matches(event))}

    # --- reads for the bus and the delivery worker -------------------------------------------

    def rules_with_targets(self, bus: str = DEFAULT_BUS) -> ActiveRules:
        """The bus's enabled rules that have targets, with their compiled patterns and target
        specs (ordered by rule, then target id). Cached until the next rule or target write;
        the lists and specs are shared with other callers, so treat them as read-only."""
        with self._lock:
            cached = self._active.get(bus)
            generation = self._generation
        if cached is not None:
            return cached
        loaded = self._load_active(bus)
        with self._lock:
            if self._generation == generation:
                self._active[bus] = loaded
        return loaded

    def _load_active(self, bus: str) -> ActiveRules:
        with self._sessions() as session:
            rules = session.scalars(
                select(EventRule)
                .where(EventRule.bus == bus, EventRule.state.in_(ENABLED_STATES))
                .order_by(EventRule.name)
            ).all()
            targets = session.scalars(
                select(EventTarget)
                .where(EventTarget.bus == bus)
                .order_by(EventTarget.rule, EventTarget.target_id)
            ).all()
        specs: dict[str, list[dict[str, Any]]] = {}
        for target in targets:
            specs.setdefault(target.rule, []).append(dict(target.spec))
        active: ActiveRules = []
        for rule in rules:
            if rule.name not in specs or rule.event_pattern is None:
                continue
            try:
                pattern = compiled(rule.event_pattern)
            except AwsError as exc:
                # Accepted once, refused now (a stricter pattern engine): skip the rule rather
                # than fail every event on the bus.
                log.error("rule %s has a pattern mlfleet now refuses: %s", rule.arn, exc.message)
                continue
            record = CompiledRule(bus, rule.name, rule.arn, rule.state, rule.event_pattern, pattern)
            active.append((record, specs[rule.name]))
        return active

    def delivery_target(
        self, bus: str, rule: str, target_id: str, target_arn: str
    ) -> HttpTarget | str:
        """How to reach a rule's target, or why it cannot be reached any more.

        Cached until the next write of a rule, target, connection or destination: without the
        cache each delivery run paid three queries and a decryption before its first request.
        """
        key = (bus, rule, target_id, target_arn)
        with self._lock:
            cached = self._delivery_targets.get(key)
            generation = self._generation
        if cached is not None:
            return cached
        spec = self.target_spec(bus, rule, target_id)
        resolved: HttpTarget | str
        if spec is None:
            resolved = "the rule or this target was removed"
        else:
            resolved = (
                self.http_target(target_arn, spec)
                or "the target's API destination no longer exists"
            )
        with self._lock:
            if self._generation == generation:
                self._delivery_targets[key] = resolved
        return resolved

    def target_spec(self, bus: str, rule: str, target_id: str) -> dict[str, Any] | None:
        """The stored Target structure, or None if the target is gone."""
        with self._sessions() as session:
            target = session.get(EventTarget, (bus, rule, target_id))
        return dict(target.spec) if target is not None else None

    def http_target(self, arn: str, spec: Mapping[str, Any]) -> HttpTarget | None:
        """How to deliver to an API-destination target, or None if it or its connection is gone."""
        destination = self.api_destination(arn)
        connection = self.connection(destination.connection_arn) if destination else None
        if destination is None or connection is None:
            return None
        headers, signing_key = connection_headers(
            connection.authorization_type, self._auth_of(connection)
        )
        http = spec.get("HttpParameters") or {}
        headers.update(http.get("HeaderParameters") or {})
        url = destination.invocation_endpoint
        for value in http.get("PathParameterValues") or []:
            url = url.replace("*", value, 1)  # API destinations mark path parameters with *
        query = http.get("QueryStringParameters") or {}
        if query:
            url += ("&" if "?" in url else "?") + urlencode(query)
        attempts, max_age = retry_limits(spec)
        return HttpTarget(url, destination.http_method, headers, signing_key, attempts, max_age)

    def api_destination(self, arn: str) -> ApiDestination | None:
        """The API destination with this ARN (a detached row), or None if it is gone."""
        with self._sessions() as session:
            return session.scalars(select(ApiDestination).where(ApiDestination.arn == arn)).first()

    def connection(self, arn: str) -> EventConnection | None:
        """The connection with this ARN (a detached row, auth parameters still sealed)."""
        with self._sessions() as session:
            return self._connection_by_arn(session, arn)

    def _auth_of(self, connection: EventConnection) -> dict[str, Any]:
        """The connection's AuthParameters, decrypted, as CreateConnection/UpdateConnection
        left them."""
        auth: dict[str, Any] = json.loads(self._box.open(connection.auth_parameters))
        return auth


# --- shaping and checking -------------------------------------------------------------------------


def _name(row: Any) -> str:
    return str(row.name)


def _rule(rule: EventRule) -> shapes.Rule:
    # What the rule lacks is None: left out of the answer, null in its audit record. So are a
    # connection's and a destination's missing members and the NextToken of a last page, hence
    # the ignores: the shapes have no None.
    return {
        "Name": rule.name,
        "Arn": rule.arn,
        "EventPattern": rule.event_pattern,  # type: ignore[typeddict-item]
        "State": rule.state,
        "Description": rule.description,  # type: ignore[typeddict-item]
        "RoleArn": rule.role_arn,  # type: ignore[typeddict-item]
        "EventBusName": rule.bus,
    }


def _input_problem(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    """What is wrong with a target's Input / InputPath / InputTransformer, if anything."""
    given = [member for member in ("Input", "InputPath", "InputTransformer") if member in entry]
    if len(given) > 1:
        return (
            "ValidationException",
            "Only one of Input, InputPath, or InputTransformer must be provided.",
        )
    if "Input" in entry:
        try:
            jsontext.loads(entry["Input"])
        except ValueError:
            return "ValidationException", "Input is not valid JSON text."
    paths = list((entry.get("InputTransformer") or {}).get("InputPathsMap", {}).values())
    if "InputPath" in entry:
        paths.append(entry["InputPath"])
    for path in paths:
        if not path.startswith("$"):
            return "ValidationException", f"JSON path {path} is not valid: it must start with $."
    return None


def _refuse_unsupported_connection(req: Mapping[str, Any]) -> None:
    """Refuse what mlfleet cannot honour, rather than store it and ignore it."""
    if req.get("AuthorizationType") == OAUTH or "OAuthParameters" in req.get("AuthParameters", {}):
        raise ValidationException(
            f"AuthorizationType {OAUTH} is not supported by mlfleet yet: use BASIC or API_KEY."
        )
    if "InvocationConnectivityParameters" in req or "ConnectivityParameters" in req.get(
        "AuthParameters", {}
    ):
        raise ValidationException(
            "Private connectivity (ConnectivityParameters) is not supported by mlfleet."
        )
    if "KmsKeyIdentifier" in req:
        raise ValidationException(
            "KmsKeyIdentifier is not supported by mlfleet: connection secrets are encrypted "
            "with the daemon's master key."
        )
    http = req.get("AuthParameters", {}).get("InvocationHttpParameters", {})
    extra = sorted(set(http) - {"HeaderParameters"})
    if extra:
        raise ValidationException(
            f"InvocationHttpParameters.{extra[0]} is not supported by mlfleet: only "
            "HeaderParameters are sent with deliveries."
        )


def _check_auth(kind: str, auth: Mapping[str, Any]) -> None:
    """The AuthParameters carry the credentials of `kind`, complete, and no others."""
    member, fields = AUTH_MEMBERS.get(kind, (None, ()))
    for other, _ in AUTH_MEMBERS.values():
        if other != member and other in auth:
            raise ValidationException(
                f"AuthParameters.{other} does not go with AuthorizationType {kind}."
            )
    if member is None:
        return
    given = auth.get(member, {})
    missing = [field for field in fields if not given.get(field)]
    if missing:
        raise ValidationException(
            f"AuthorizationType {kind} needs AuthParameters.{member} with {' and '.join(missing)}."
        )


def _merged_auth(stored: Mapping[str, Any], update: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """UpdateConnection's parameters over the stored ones: credentials field by field (only if
    still of the same kind), InvocationHttpParameters whole."""
    member = AUTH_MEMBERS.get(kind, ("", ()))[0]
    merged: dict[str, Any] = {}
    if member:
        merged[member] = {**stored.get(member, {}), **update.get(member, {})}
        if not merged[member]:
            del merged[member]
    http = update.get("InvocationHttpParameters", stored.get("InvocationHttpParameters"))
    if http is not None:
        merged["InvocationHttpParameters"] = http
    # Credentials of another kind in the update are refused by _check_auth, not dropped.
    for other, _ in AUTH_MEMBERS.values():
        if other != member and other in update:
            merged[other] = update[other]
    return merged


def _public_auth(auth: Mapping[str, Any]) -> shapes.ConnectionAuthResponseParameters:
    """AuthParameters as DescribeConnection shows them: no passwords, keys or secret values."""
    shown: Output = {
        member: {field: auth[member][field]}
        for member, field in PUBLIC_AUTH_FIELDS.items()
        if field in auth.get(member, {})
    }
    http = auth.get("InvocationHttpParameters")
    if http:
        shown["InvocationHttpParameters"] = {
            kind: [
                {k: v for k, v in p.items() if k != "Value"} if p.get("IsValueSecret") else p
                for p in parameters
            ]
            for kind, parameters in http.items()
        }
    # Built from the AuthParameters CreateConnection/UpdateConnection validated: the shape.
    return cast(shapes.ConnectionAuthResponseParameters, shown)


def _connection(connection: EventConnection) -> shapes.Connection:
    return {
        "ConnectionArn": connection.arn,
        "ConnectionState": connection.state,
        "CreationTime": when(connection.created_at),
        "LastModifiedTime": when(connection.updated_at),
        "LastAuthorizedTime": when(connection.updated_at),
        "Name": connection.name,
        "AuthorizationType": connection.authorization_type,
    }


def _connection_times(connection: EventConnection) -> shapes.UpdateConnectionResponse:
    return {
        "ConnectionArn": connection.arn,
        "ConnectionState": connection.state,
        "CreationTime": when(connection.created_at),
        "LastModifiedTime": when(connection.updated_at),
        "LastAuthorizedTime": when(connection.updated_at),
    }


def _destination(destination: ApiDestination) -> shapes.ApiDestination:
    return {
        **_destination_times(destination),
        "Name": destination.name,
        "ConnectionArn": destination.connection_arn,
        "InvocationEndpoint": destination.invocation_endpoint,
        "HttpMethod": destination.http_method,
        "InvocationRateLimitPerSecond": destination.rate_limit_per_second,  # type: ignore[typeddict-item]
    }


def _destination_times(destination: ApiDestination) -> shapes.UpdateApiDestinationResponse:
    return {
        "ApiDestinationArn": destination.arn,
        "ApiDestinationState": destination.state,
        "CreationTime": when(destination.created_at),
        "LastModifiedTime": when(destination.updated_at),
    }
