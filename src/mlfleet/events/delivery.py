"""The delivery worker: drains the outbox to HTTP targets, at least once, in order per target.

For each (rule, target) only the oldest pending delivery is attempted, so a receiver that is
down holds its queue back rather than receiving events out of order; others are not held up.
A failed attempt is retried with exponential backoff (capped) until the target's RetryPolicy
gives up (MaximumRetryAttempts, default 185; MaximumEventAgeInSeconds, default 86400), or at
once for a refusal that retrying cannot fix (a 4xx other than 408 and 429); the delivery then
moves to the dead-letter store, where ``mlfleet events`` lists and redrives it.

Every request is signed so receivers can check it came from mlfleet, unaltered:
``X-Mlfleet-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, keyed with the
connection's secret (the API key value, or the Basic password).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import aiohttp
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth.identity import Principal
from mlfleet.events.egress import OwnAddress, guarded_connector
from mlfleet.iam.authorizer import Authorizer, RequestFacts
from mlfleet.state.models import EventDelivery

if TYPE_CHECKING:  # the store builds on this module
    from mlfleet.events.store import EventStore

log = logging.getLogger(__name__)

DEFAULT_RETRY_ATTEMPTS = 185
DEFAULT_MAX_AGE_SECONDS = 86400
FIRST_BACKOFF_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 10
SIGNATURE_HEADER = "X-Mlfleet-Signature"
IDLE_POLL_SECONDS = 2.0
# Deliveries sent to one target per lookup of it (in order, one at a time).
RUN_LENGTH = 100
KEEP_DELIVERED_SECONDS = 3600.0
PURGE_EVERY_SECONDS = 300.0
# Deliveries the console shows of a rule: its newest, whatever their state.
RECENT_DELIVERIES = 50
# Statuses worth retrying: the receiver may answer differently later.
_RETRYABLE_4XX = {408, 429}


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


def sign(key: bytes, body: bytes, moment: int) -> str:
    digest = hmac.new(key, f"{moment}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={moment},v1={digest}"


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


class DeliveryWorker:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        resolve: TargetResolver,
        max_backoff_seconds: float,
        own: OwnAddress,
        concurrency: int = 16,
    ) -> None:
        self._sessions = sessions
        self._resolve = resolve
        self._own = own
        self._max_backoff = max_backoff_seconds
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_purge = 0.0

    def wake(self) -> None:
        """Deliveries were stored; callable from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = aiohttp.ClientSession(
            connector=guarded_connector(self._own),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
        )
        self._task = self._loop.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.close()

    async def _run(self) -> None:
        while True:
            # Cleared before the round, not after it: a wake-up that arrives while the round
            # runs (an event stored after its query) must start the next round at once rather
            # than wait for the idle poll.
            self._wake.clear()
            try:
                wait = await self._round()
            except Exception:
                log.exception("event delivery round failed")
                wait = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _round(self) -> float:
        """Drain every queue whose head is due; return how long until the next one is."""
        heads = await asyncio.to_thread(self._heads)
        now = time.time()
        due = [head for head in heads if head.next_attempt_at <= now]
        semaphore = asyncio.Semaphore(self._concurrency)

        async def drain(head: EventDelivery) -> None:
            async with semaphore:
                await self._drain(head)

        await asyncio.gather(*(drain(head) for head in due))
        if now - self._last_purge > PURGE_EVERY_SECONDS:
            self._last_purge = now
            await asyncio.to_thread(self._purge, now - KEEP_DELIVERED_SECONDS)
        later = [h.next_attempt_at for h in heads if h.next_attempt_at > now]
        if due:
            return 0.0  # more may have queued behind the runs just sent
        # Idle, look again soon anyway: `mlfleet events redrive` writes the outbox directly.
        return max(0.05, min(min(later) - now, IDLE_POLL_SECONDS)) if later else IDLE_POLL_SECONDS

    def _heads(self) -> list[EventDelivery]:
        with self._sessions() as session:
            oldest = (
                select(func.min(EventDelivery.id))
                .where(EventDelivery.state == "pending")
                .group_by(EventDelivery.bus, EventDelivery.rule, EventDelivery.target_id)
            )
            return list(session.scalars(select(EventDelivery).where(EventDelivery.id.in_(oldest))))

    def _run_of(self, head: EventDelivery) -> tuple[list[EventDelivery], HttpTarget | str]:
        """The head and what queued behind it, and how to reach their target (or why not)."""
        with self._sessions() as session:
            run = list(
                session.scalars(
                    select(EventDelivery)
                    .where(
                        EventDelivery.state == "pending",
                        EventDelivery.bus == head.bus,
                        EventDelivery.rule == head.rule,
                        EventDelivery.target_id == head.target_id,
                        EventDelivery.id >= head.id,
                    )
                    .order_by(EventDelivery.id)
                    .limit(RUN_LENGTH)
                )
            )
        return run, self._resolve(head.bus, head.rule, head.target_id, head.target_arn)

    async def _drain(self, head: EventDelivery) -> None:
        """Send a queue's deliveries in order, one at a time, until one must wait for a retry.

        One lookup of the target serves the whole run, and the deliveries that went through are
        marked in one update: each delivery costs an HTTP request, not a round of queries.
        """
        run, target = await asyncio.to_thread(self._run_of, head)
        delivered: list[int] = []
        try:
            for delivery in run:
                if isinstance(target, str):
                    await self._finish(delivery, "dead", target)
                    continue
                error, retryable = await self._send(delivery, target)
                if error is None:
                    delivered.append(delivery.id)
                    continue
                await self._flush_delivered(delivered)
                if not retryable:
                    await self._finish(delivery, "dead", f"{error} (not retryable)")
                    continue
                await self._retry_or_die(delivery, target, error)
                return  # the rest wait behind it: order per target
        finally:
            await self._flush_delivered(delivered)

    async def _send(self, delivery: EventDelivery, target: HttpTarget) -> tuple[str | None, bool]:
        """Deliver once: (None, _) when accepted, else (why, whether retrying may help)."""
        assert self._client is not None
        if self._own.literal_is_own(target.url):
            return f"{target.url} is mlfleet itself: events are not delivered to it", False
        body = delivery.payload.encode()
        moment = int(time.time())
        headers = {
            "Content-Type": "application/json",
            **target.headers,
            SIGNATURE_HEADER: sign(target.signing_key, body, moment),
            "X-Mlfleet-Delivery-Id": str(delivery.id),
            "X-Mlfleet-Event-Id": delivery.event_id,
            "X-Mlfleet-Attempt": str(delivery.attempts + 1),
        }
        try:
            async with self._client.request(
                target.method, target.url, data=body, headers=headers
            ) as answer:
                await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{exc.__class__.__name__}: {exc}", True
        if 200 <= status < 300:
            return None, False
        return f"HTTP {status}", not (400 <= status < 500 and status not in _RETRYABLE_4XX)

    async def _flush_delivered(self, delivered: list[int]) -> None:
        if not delivered:
            return
        ids, delivered[:] = list(delivered), []
        await asyncio.to_thread(self._mark_delivered, ids)

    def _mark_delivered(self, ids: list[int]) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(EventDelivery)
                .where(EventDelivery.id.in_(ids))
                .values(
                    state="delivered",
                    attempts=EventDelivery.attempts + 1,
                    last_error=None,
                    finished_at=time.time(),
                )
            )

    def _purge(self, before: float) -> None:
        """Delivered events are kept a while (to look into), not forever."""
        with self._sessions.begin() as session:
            session.execute(
                delete(EventDelivery).where(
                    EventDelivery.state == "delivered", EventDelivery.finished_at < before
                )
            )

    async def _retry_or_die(self, delivery: EventDelivery, target: HttpTarget, error: str) -> None:
        attempts = delivery.attempts + 1
        age = time.time() - delivery.created_at
        if attempts > target.max_attempts or age > target.max_age_seconds:
            await self._finish(delivery, "dead", f"gave up after {attempts} attempts: {error}")
            return
        backoff = min(self._max_backoff, FIRST_BACKOFF_SECONDS * 2 ** (attempts - 1))
        backoff *= random.uniform(0.8, 1.0)  # jitter: receivers coming back are not stampeded
        await asyncio.to_thread(
            self._update,
            delivery.id,
            attempts=attempts,
            next_attempt_at=time.time() + backoff,
            last_error=error,
        )

    async def _finish(self, delivery: EventDelivery, state: str, error: str | None) -> None:
        if state == "dead":
            log.warning("event delivery %s dead-lettered: %s", delivery.id, error)
        await asyncio.to_thread(
            self._update,
            delivery.id,
            state=state,
            attempts=delivery.attempts + 1,
            last_error=error,
            finished_at=time.time(),
        )

    def _update(self, delivery_id: int, **values: Any) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(EventDelivery).where(EventDelivery.id == delivery_id).values(**values)
            )


def retry_limits(spec: Mapping[str, Any] | None) -> tuple[int, float]:
    policy = (spec or {}).get("RetryPolicy") or {}
    return (
        int(policy.get("MaximumRetryAttempts", DEFAULT_RETRY_ATTEMPTS)),
        float(policy.get("MaximumEventAgeInSeconds", DEFAULT_MAX_AGE_SECONDS)),
    )


# --- the dead-letter store ------------------------------------------------------------------------


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
        result = session.execute(
            query.values(state="pending", attempts=0, next_attempt_at=now, created_at=now)
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
    """

    def __init__(
        self, sessions: sessionmaker[Session], store: EventStore, authorizer: Authorizer
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._authorizer = authorizer

    def recent(
        self, principal: Principal, rule: str, *, source_ip: str | None, secure_transport: bool
    ) -> list[EventDelivery]:
        facts = RequestFacts(source_ip=source_ip, secure_transport=secure_transport)
        self._authorizer.require(principal, *self._describe_rule(rule, facts))
        return recent_deliveries(self._sessions, rule)

    def dead(
        self, principal: Principal, *, source_ip: str | None, secure_transport: bool
    ) -> list[EventDelivery]:
        """The dead letters of the rules the principal may describe."""
        facts = RequestFacts(source_ip=source_ip, secure_transport=secure_transport)
        letters = dead_letters(self._sessions)
        visible = {
            rule
            for rule in {letter.rule for letter in letters}
            if self._authorizer.check(principal, *self._describe_rule(rule, facts)).allowed
        }
        return [letter for letter in letters if letter.rule in visible]

    def redrive(
        self,
        principal: Principal,
        ids: list[int],
        *,
        source_ip: str | None,
        secure_transport: bool,
    ) -> int:
        """Redrive these dead letters (ids no longer dead are skipped); AccessDeniedException,
        and none redriven, unless the principal may redrive every one."""
        facts = RequestFacts(source_ip=source_ip, secure_transport=secure_transport)
        wanted = set(ids)
        letters = [letter for letter in dead_letters(self._sessions) if letter.id in wanted]
        for rule in sorted({letter.rule for letter in letters}):
            self._authorizer.require(principal, *self._describe_rule(rule, facts))
        self._authorizer.require(principal, "events:PutEvents", self._store.bus_arn, facts)
        return redrive(self._sessions, [letter.id for letter in letters])

    def _describe_rule(self, rule: str, facts: RequestFacts) -> tuple[str, str, RequestFacts]:
        """events:DescribeRule on the rule, with its tags, as the API checks it."""
        tagged = replace(facts, resource_tags=self._store.rule_tags(rule))
        return "events:DescribeRule", self._store.rule_arn(rule), tagged
