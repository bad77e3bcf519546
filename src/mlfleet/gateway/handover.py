"""Handing a client's keep-alive connection to the MLflow worker that serves it, and back.

The gateway's hop costs a one-call-at-a-time client (a training loop's ``log_metric``) more
than MLflow's own work would let it keep up with the worker reached directly (README,
"Figures"). So once the gateway has answered a call authenticated with HTTP Basic or SigV4, it
sends its answer, then passes the socket to one of the server's workers over that worker's
channel (runtime.handoff) with a ``Ticket``: the verified Basic Authorization header, or for
SigV4 the signing key of the signature's scope (one day, region and service; each request
carries a new signature, and the worker must not hold the secret), the route, and the actions
the caller's policies allow on this server, evaluated now for all of them. The worker
(runtime.fast_lane) serves the later calls that the ticket settles and hands anything else
back, which is served here as a new connection.

Not handed over: browser sessions, servers whose policy decisions depend on the moment, and
HTTP/1.0. What stays with the daemon: the audit trail (workers send the data events they made
durable with MLflow's own commit in batches; any other is recorded by the daemon before the
lane answers), request figures for the console. A stored record the trail could not take (the
disk full, say) is offered to it again every ``RETRY_SECONDS`` until it is in: MLflow's write
it rode on was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import HttpVersion11, web

from mlfleet.audit.trail import AuditTrail, DataEvent
from mlfleet.auth import sigv4
from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.common.storage import storage_full
from mlfleet.events.sources import MLFLOW_DETAIL_TYPES
from mlfleet.gateway.data_events import AUDITED_BODY_LIMIT, data_event, keeps_body
from mlfleet.metrics import Recorder
from mlfleet.mlflow_api.actions import ACTIONS, SERVICE
from mlfleet.policy.authorizer import Authorizer, RequestFacts
from mlfleet.protocol.errors import AwsError
from mlfleet.runtime.handoff import SIGNED_SCOPE, Channel, Message, Ticket
from mlfleet.runtime.local import LocalRuntime, Worker
from mlfleet.runtime.stored_events import DELETE_BATCH, left_over_in
from mlfleet.settings import Settings
from mlfleet.state.db import database_unavailable, driver_message

log = logging.getLogger(__name__)

# Calls the daemon follows up after MLflow answers (MLflow events on the bus, automatic model
# registration) stay with the gateway: a ticket never allows them.
FOLLOWED_UP = frozenset(MLFLOW_DETAIL_TYPES) | {"CreateModelVersion", "SetRegisteredModelAlias"}
# Enough to span the moments a record may be sent twice (a worker starting while another
# waits for its ack): a second copy of an older one is caught by asking the trail.
RECENT_EVENT_IDS = 65536
LANE_ACTIONS = tuple(sorted(f"{SERVICE}:{name}" for name in ACTIONS - FOLLOWED_UP))
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Holder:
    """Where a ticket's connection is: the server its figures count for, the worker's channel."""

    server_id: str
    channel: Channel


class Handover:
    def __init__(
        self,
        settings: Settings,
        runtime: LocalRuntime,
        credentials: Credentials,
        authorizer: Authorizer,
        audit: AuditTrail,
        metrics: Recorder,
    ) -> None:
        self._settings = settings
        self._runtime = runtime
        self._credentials = credentials
        self._authorizer = authorizer
        self._audit = audit
        self._metrics = metrics
        self._ids = itertools.count(1)
        self._holders: dict[int, Holder] = {}
        self._listening: set[int] = set()
        # aiohttp's protocol factory, to serve a connection a worker hands back.
        self._server: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Event ids of records workers stored themselves, lately appended (or on their way).
        self._recent: OrderedDict[str, None] = OrderedDict()
        # Per worker channel, ids appended whose stored copies the worker has not been told of
        # yet; lost with the daemon, those copies are sent again and found in the trail.
        self._recorded: dict[Channel, list[str]] = {}
        self._recorded_lock = threading.Lock()
        # Stored records the trail failed to take, offered again together after RETRY_SECONDS.
        self._retrying: list[tuple[Channel, Message]] = []
        self._retry: asyncio.TimerHandle | None = None

    async def offer(
        self,
        request: web.Request,
        response: web.StreamResponse,
        server_id: str,
        arn: str,
        prefix: str,
        principal: Principal,
        facts: RequestFacts,
        audited: bool,
    ) -> None:
        """Send ``response`` and hand the connection over, when that is safe; otherwise leave
        both to aiohttp."""
        authorization = request.headers.get("Authorization", "")
        transport = request.transport
        if (
            not self._settings.connection_handoff
            # A TLS session's keys live in the daemon: its socket means nothing to a worker.
            or request.secure
            or not authorization.startswith(("Basic ", sigv4.ALGORITHM))
            or not isinstance(response, web.Response)
            or response.prepared
            or request.version != HttpVersion11
            or not request.keep_alive
            # A body refused unread (413, say) is still arriving: aiohttp deals with the rest.
            or (request.body_exists and not request.content.at_eof())
            or transport is None
        ):
            return
        sock = transport.get_extra_info("socket")
        # The web.Server behind this request (aiohttp offers no public handle on it): a
        # connection handed back is served by it like any other.
        server = getattr(request.protocol, "_manager", None)
        worker = self._least_held(server_id)
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        if server is None or worker is None or worker.channel is None:
            return
        allowed = self._authorizer.fixed_decisions(principal, LANE_ACTIONS, arn, facts)
        if allowed is None:
            return
        signed = self._signed(request) if authorization.startswith(sigv4.ALGORITHM) else None
        if signed is None and not authorization.startswith("Basic "):
            return
        ticket = Ticket(
            id=next(self._ids),
            authorization="" if signed else authorization,
            prefix=prefix,
            arn=arn,
            allowed=allowed,
            audited=audited,
            caller=asdict(principal),
            source_ip=request.remote,
            generation=self._runtime.generation.value(),
            body_limit=self._settings.max_api_body_bytes,
            audited_body_limit=AUDITED_BODY_LIMIT,
            concurrency=self._settings.max_inflight_per_worker,
            signed=signed,
        )
        # Nothing more is read here: what the client sends next is the worker's to read.
        transport.pause_reading()
        await response.prepare(request)
        await response.write_eof()
        if transport.is_closing() or transport.get_write_buffer_size() or worker.channel is None:
            transport.resume_reading()
            return
        self._server = server
        channel = worker.channel
        self.listen(channel)
        if channel.closed:  # its worker died meanwhile: the connection stays with the gateway
            transport.resume_reading()
            return
        copy = os.dup(sock.fileno())
        try:
            channel.send(ticket.to_message(), copy)
        except OSError:
            transport.resume_reading()
            return
        finally:
            os.close(copy)
        self._holders[ticket.id] = Holder(server_id, channel)
        transport.abort()  # closes the daemon's descriptor only: the worker holds the socket

    def _signed(self, request: web.Request) -> dict[str, Any] | None:
        """What a SigV4 ticket holds of the request's (verified) signature, None if the key
        is no longer usable."""
        info = sigv4.parse_authorization(request.headers)
        try:
            record = self._credentials.usable(info.access_key_id, info.security_token)
        except AwsError:
            return None
        key = sigv4.signing_key(record.secret, info.date, info.region, info.service)
        scope = {name: getattr(info, name) for name in SIGNED_SCOPE}
        return {**scope, "expires_at": record.expires_at, "key": key.hex()}

    def _least_held(self, server_id: str) -> Worker | None:
        procs = self._runtime.get(server_id)
        if procs is None:
            return None
        ready = [w for w in procs.workers if w.healthy and w.channel is not None]
        held = [holder.channel for holder in self._holders.values()]
        return min(ready, key=lambda w: held.count(w.channel), default=None)  # type: ignore[arg-type]

    # the workers' messages -----------------------------------------------------------------

    def listen(self, channel: Channel) -> None:
        """Take a worker's messages: from its start, since it may first send records it had
        stored and not yet seen acknowledged."""
        if id(channel) in self._listening:
            return
        self._listening.add(id(channel))

        def on_message(message: Message, fd: int | None, payload: bytes) -> None:
            self._on_message(channel, message, fd, payload)

        def on_closed() -> None:
            self._listening.discard(id(channel))
            with self._recorded_lock:
                self._recorded.pop(channel, None)
            for ticket_id, holder in list(self._holders.items()):
                if holder.channel is channel:
                    del self._holders[ticket_id]

        channel.listen(asyncio.get_running_loop(), on_message, on_closed)

    def _on_message(
        self, channel: Channel, message: Message, fd: int | None, payload: bytes
    ) -> None:
        kind = message["t"]
        if kind == "back":
            self._holders.pop(message["ticket"], None)
            if fd is not None:
                self._spawn(self._take_back(fd, payload))
        elif kind == "closed":
            self._holders.pop(message["ticket"], None)
        elif kind == "done":
            for ticket_id, status, seconds in message["calls"]:
                holder = self._holders.get(ticket_id)
                if holder is not None:
                    self._metrics.request(holder.server_id, status, seconds)
        elif kind == "audit":
            self._record(channel, message, payload)
        elif kind == "stored":
            for record in json.loads(payload):
                self._offer_stored(channel, record, again=message["again"])
        elif fd is not None:
            os.close(fd)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take_back(self, fd: int, buffered: bytes) -> None:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: Replaying(self._server(), buffered), sock)
        except OSError:
            sock.close()

    def _record(
        self, channel: Channel, message: Message, answer: bytes, again: bool = False
    ) -> None:
        """Append a write's data event to the trail, then tell the worker (from the audit
        writer's thread): an ack it waits for before answering, or, for a record it already
        stored with MLflow's write, that its copy can go."""
        event_id = message.get("event_id")
        if event_id is not None and not self._first_copy(event_id, again):
            self._tell_recorded(channel, event_id)
            return

        loop = asyncio.get_running_loop()

        def durable(error: Exception | None) -> None:
            away = database_unavailable(error)
            if error is not None and away:
                log.warning(
                    "recording a data event for a handed-over connection met the database "
                    "unavailable: %s",
                    driver_message(error),
                )
            elif error is not None:
                reason = "the storage is full" if storage_full(error) else error
                log.error("recording a data event for a handed-over connection failed: %s", reason)
            if "seq" in message:
                failed = {"failed": error is not None, "full": storage_full(error), "away": away}
                with contextlib.suppress(OSError):
                    channel.send({"t": "ack", "seq": message["seq"], **failed})
            elif error is None:
                self._tell_recorded(channel, event_id)
            else:
                loop.call_soon_threadsafe(self._retry_later, channel, message)

        # A record the worker stored with MLflow's write may wait to share a commit.
        self._audit.record_data_event_then(
            self._data_event(message, answer), durable, stored_elsewhere="seq" not in message
        )

    def _retry_later(self, channel: Channel, message: Message) -> None:
        """Offer a stored record to the trail again soon, as a copy that may be there."""
        self._recent.pop(message["event_id"], None)
        self._retrying.append((channel, message))
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(RETRY_SECONDS, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        waiting, self._retrying = self._retrying, []
        for channel, message in waiting:
            self._offer_stored(channel, message, again=True)

    def _offer_stored(self, channel: Channel, record: Message, again: bool) -> None:
        """Append a record the worker stored with MLflow's write; if the trail cannot even be
        read now (is it there already?), offer it again later rather than drop it."""
        try:
            self._record(channel, record, b"", again=again)
        except Exception as error:
            reason = driver_message(error) if database_unavailable(error) else error
            log.warning("a stored data event waits for the trail: %s", reason)
            self._retry_later(channel, record)

    def _first_copy(self, event_id: str, again: bool) -> bool:
        """Whether a stored record is new to the trail, noting that it is on its way there. A
        worker's stored copy is sent again by the next worker to start, which may be before
        the first copy was acknowledged."""
        if event_id in self._recent or (again and self._audit.knows(event_id)):
            return False
        self._recent[event_id] = None
        if len(self._recent) > RECENT_EVENT_IDS:
            self._recent.popitem(last=False)
        return True

    async def record_left_over(self, database_uri: str) -> None:
        """Append what a server's database holds of records its workers stored and never
        sent (a worker killed before its last batch went out), once none of them runs: the
        database may be dropped next."""
        rows = await asyncio.to_thread(left_over_in, database_uri)
        unsent = [(event_id, record) for event_id, record in rows if event_id not in self._recent]
        known = await asyncio.to_thread(lambda: {i for i, _ in unsent if self._audit.knows(i)})
        appends = [
            self._audit.record_data_event(self._data_event(json.loads(record), b""))
            for event_id, record in unsent
            if event_id not in known and self._first_copy(event_id, again=False)
        ]
        await asyncio.gather(*appends)

    def _data_event(self, message: Message, answer: bytes) -> DataEvent:
        kept = keeps_body(message["path"], message["length"]) and message["body"] is not None
        return data_event(
            principal=Principal(**message["caller"]),
            action=message["action"],
            resource=message["arn"],
            started=message["started"],
            source_ip=message["source_ip"],
            user_agent=message["user_agent"],
            method=message["method"],
            upstream_path=message["path"],
            body=message["body"].encode("latin-1") if kept else None,
            status=message["status"],
            answer=answer or None,
            event_id=message.get("event_id"),
        )

    def _tell_recorded(self, channel: Channel, event_id: str | None) -> None:
        """Tell the worker its copy can go, as many at once as it deletes at once: a message
        per write would wake both processes for nothing. (Called from two threads.)"""
        if event_id is None:
            return
        with self._recorded_lock:
            waiting = self._recorded.setdefault(channel, [])
            waiting.append(event_id)
            if len(waiting) < DELETE_BATCH:
                return
            del self._recorded[channel]
        with contextlib.suppress(OSError):
            channel.send({"t": "recorded", "event_ids": waiting})


class Replaying(asyncio.Protocol):
    """aiohttp's protocol for a connection handed back, fed first what the worker had read.

    Fed from ``connection_made``, before the transport's first read: the rest of a request
    (its body, say) may already wait in the socket.
    """

    def __init__(self, inner: asyncio.Protocol, first: bytes) -> None:
        self._inner = inner
        self._first = first

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)
        if self._first:
            self._inner.data_received(self._first)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
