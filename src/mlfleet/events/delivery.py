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
import contextlib
import hashlib
import hmac
import logging
import random
import time
from typing import Any

import aiohttp
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.events.egress import OwnAddress, guarded_connector
from mlfleet.events.targets import HttpTarget, TargetResolver
from mlfleet.state.db import database_unavailable, driver_message
from mlfleet.state.models import EventDelivery

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 10
SIGNATURE_HEADER = "X-Mlfleet-Signature"
IDLE_POLL_SECONDS = 2.0
# Deliveries sent to one target per lookup of it (in order, one at a time).
RUN_LENGTH = 100
KEEP_DELIVERED_SECONDS = 3600.0
PURGE_EVERY_SECONDS = 300.0
# Statuses worth retrying: the receiver may answer differently later.
_RETRYABLE_4XX = {408, 429}


def sign(key: bytes, body: bytes, moment: int) -> str:
    digest = hmac.new(key, f"{moment}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={moment},v1={digest}"


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
            except Exception as exc:
                # The outbox is in the database: while it is away, nothing is lost, and the
                # next round (after the pause) sends what is due.
                if database_unavailable(exc):
                    log.warning("event delivery waits for the database: %s", driver_message(exc))
                else:
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
