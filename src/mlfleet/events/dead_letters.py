"""Deliveries and the dead-letter store: list, inspect and redrive (console and CLI)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.api.operations import Check, Target
from mlfleet.api.pipeline import ApiCall, Pipeline
from mlfleet.auth.identity import Principal
from mlfleet.events.responses import BUS_TYPE, RULE_TYPE
from mlfleet.events.store import EventStore
from mlfleet.policy.authorizer import RequestFacts
from mlfleet.protocol.errors import AwsError
from mlfleet.state.models import EventDelivery

# Deliveries the console shows of a rule: its newest, whatever their state.
RECENT_DELIVERIES = 50


def dead_letters(sessions: sessionmaker[Session], rule: str | None = None) -> list[EventDelivery]:
    with sessions() as session:
        query = select(EventDelivery).where(EventDelivery.state == "dead")
        if rule is not None:
            query = query.where(EventDelivery.rule == rule)
        return list(session.scalars(query.order_by(EventDelivery.id)))


def redrive(sessions: sessionmaker[Session], ids: list[int] | None = None) -> int:
    """Put dead deliveries (these, or all) back in their queues; they keep their place."""
    query = update(EventDelivery).where(EventDelivery.state == "dead")
    if ids is not None:
        query = query.where(EventDelivery.id.in_(ids))
    now = time.time()
    with sessions.begin() as session:
        # An UPDATE's result is a CursorResult, which Session.execute's typing does not say.
        result = cast(
            CursorResult[Any],
            session.execute(
                query.values(state="pending", attempts=0, next_attempt_at=now, created_at=now)
            ),
        )
    return int(result.rowcount or 0)


def recent_deliveries(
    sessions: sessionmaker[Session], rule: str, limit: int = RECENT_DELIVERIES
) -> list[EventDelivery]:
    """A rule's newest deliveries in every state (delivered ones are kept for an hour)."""
    with sessions() as session:
        query = select(EventDelivery).where(EventDelivery.rule == rule)
        return list(session.scalars(query.order_by(EventDelivery.id.desc()).limit(limit)))


def delivery_status(delivery: EventDelivery) -> str:
    """pending, retrying (pending after a failed attempt), delivered or dead."""
    if delivery.state == "pending" and delivery.attempts:
        return "retrying"
    return delivery.state


class DeliveryLog:
    """Deliveries and the dead-letter store as a signed-in principal may see and redrive them.

    EventBridge's API has no operation for either (AWS keeps dead letters in SQS), so no IAM
    action names them; the checks borrow the actions that grant the same thing. A rule's
    deliveries are what events:DescribeRule on that rule covers: the rule's own record. Redriving
    sends events onto the bus's targets again, which is what events:PutEvents on the bus allows;
    it also needs DescribeRule on each rule involved, so no one redrives what they cannot see.
    Each is audited like an API call of EventBridge, under mlfleet's own names
    (``ListRuleDeliveries``, ``ListDeadLetters``, ``RedriveDeadLetters``).
    """

    def __init__(
        self, sessions: sessionmaker[Session], store: EventStore, pipeline: Pipeline
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._pipeline = pipeline

    def recent(
        self,
        principal: Principal,
        rule: str,
        *,
        source_ip: str | None,
        secure_transport: bool,
        user_agent: str,
    ) -> list[EventDelivery]:
        facts = RequestFacts(source_ip=source_ip, secure_transport=secure_transport)
        with self._audited(
            principal, "ListRuleDeliveries", {"Rule": rule}, facts, user_agent
        ) as record:
            self._pipeline.require(record, [self._describe_rule(rule)], principal, facts)
            return recent_deliveries(self._sessions, rule)

    def dead(
        self,
        principal: Principal,
        *,
        source_ip: str | None,
        secure_transport: bool,
        user_agent: str,
    ) -> list[EventDelivery]:
        """The dead letters of the rules the principal may describe."""
        facts = RequestFacts(source_ip=source_ip, secure_transport=secure_transport)
        with self._audited(principal, "ListDeadLetters", {}, facts, user_agent):
            letters = dead_letters(self._sessions)
            visible = {
                rule
                for rule in {letter.rule for letter in letters}
                if self._pipeline.decide(principal, self._describe_rule(rule), facts).allowed
            }
            return [letter for letter in letters if letter.rule in visible]

    def redrive(
        self,
        principal: Principal,
        ids: list[int],
        *,
        source_ip: str | None,
        secure_transport: bool,
        user_agent: str,
    ) -> int:
        """Redrive these dead letters (ids no longer dead are skipped); AccessDeniedException,
        and none redriven, unless the principal may redrive every one."""
        facts = RequestFacts(source_ip=source_ip, secure_transport=secure_transport)
        with self._audited(
            principal, "RedriveDeadLetters", {"Ids": ids}, facts, user_agent
        ) as record:
            wanted = set(ids)
            letters = [letter for letter in dead_letters(self._sessions) if letter.id in wanted]
            checks = [self._describe_rule(rule) for rule in sorted({ltr.rule for ltr in letters})]
            checks.append(Check("events:PutEvents", Target(self._store.bus_arn), BUS_TYPE))
            self._pipeline.require(record, checks, principal, facts)
            count = redrive(self._sessions, [letter.id for letter in letters])
            record.response = {"Redriven": count}
            return count

    @contextmanager
    def _audited(
        self,
        principal: Principal,
        name: str,
        parameters: dict[str, Any],
        facts: RequestFacts,
        user_agent: str,
    ) -> Iterator[ApiCall]:
        record = ApiCall.begin(
            "events", source_ip=facts.source_ip, user_agent=user_agent, principal=principal
        )
        record.operation, record.parameters = name, parameters
        record.read_only = name != "RedriveDeadLetters"
        try:
            yield record
        except AwsError as exc:
            record.error = exc
            raise
        finally:
            self._pipeline.finish(record)

    def _describe_rule(self, rule: str) -> Check:
        """events:DescribeRule on the rule, with its tags, as the API checks it."""
        target = Target(self._store.rule_arn(rule), self._store.rule_tags(rule))
        return Check("events:DescribeRule", target, RULE_TYPE)
