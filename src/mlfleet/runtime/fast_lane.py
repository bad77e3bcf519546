"""A worker serving the client connections the gateway handed over, without the hop.

Through the gateway every call pays a second HTTP exchange in Python, a large share of a short
MLflow call (the README's "How it is built" has the figures). When the gateway has answered a
request authenticated with HTTP Basic (what the plain MLflow client sends) or SigV4 (the
sagemaker-mlflow plugin), it hands the keep-alive connection to the worker with a ``Ticket``
(runtime.handoff). The lane then serves a request itself only when the ticket settles
everything the gateway would decide for it:

* the same server (path prefix, or the ARN header) and one of MLflow's REST routes that its
  Flask app serves;
* the same caller: exactly the Basic Authorization header the gateway verified, or a SigV4
  signature the ticket's signing key verifies, for the same key, session and day;
* an action the ticket lists as allowed: the gateway evaluated the caller's policies for every
  action on this server, which it only does when no decision depends on the moment;
* nothing the gateway's input checks refuse (mlfleet.mlflow_api.hardening), and a small body;
* no change since in IAM or in the server (``Generation``);
* none of the calls the daemon follows up (MLflow events, automatic registration): those are
  not in ``allowed``.

Anything else goes back to the daemon with the bytes read so far, and the daemon serves it as
a new connection. A write on an audited server is a data event, durable before the answer
leaves: stored with MLflow's own commit (runtime.stored_events) and appended to the daemon's
trail in batches after the answers, or, when MLflow committed nothing, recorded by the daemon
with the outcome before the lane answers. MLflow calls from handed-over connections are capped
per worker (``Ticket.concurrency``, the gateway's admission limit) and queue in order.

With the storage full, a write MLflow could not commit is answered with MLflow's 507
(runtime.full_storage) even when its outcome cannot be recorded either, and a write it applied
whose record the daemon could not store is answered 507 too: it is not acknowledged. With the
daemon's database away for a moment, such a write is answered 503 with Retry-After, which the
client retries (a failed write keeps MLflow's answer, itself a 503 when the database is away).
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

from a2wsgi.wsgi import build_environ
from a2wsgi.wsgi_typing import Environ
from multidict import CIMultiDict

from mlfleet.auth import sigv4
from mlfleet.common.storage import INSUFFICIENT_STORAGE, NOT_RECORDED, RESOURCE_EXHAUSTED
from mlfleet.mlflow_api.actions import SERVICE, is_write, required_action
from mlfleet.mlflow_api.hardening import (
    APP_ARN_HEADER,
    ARN_HEADER,
    MAX_REQUEST_HEAD,
    MAX_REQUEST_LINE,
    STRIPPED_REQUEST,
    STRIPPED_RESPONSE,
    request_problem,
)
from mlfleet.mlflow_api.s3_view import (
    PRESIGNED_UPLOAD_PATH,
    bucket_of,
    from_s3_view,
    to_s3_view,
)
from mlfleet.protocol.errors import AwsError
from mlfleet.runtime.handoff import SIGNED_SCOPE, Channel, Generation, Message, Ticket
from mlfleet.runtime.sockets import WORKER_HOST
from mlfleet.runtime.stored_events import StoredEvents
from mlfleet.state.db import NOT_RECORDED_WHILE_AWAY, RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)

# Larger bodies (artifact uploads, big batches) go back to the gateway, which streams them.
BODY_LIMIT = 256 * 1024
# aiohttp's keep-alive timeout: a connection stays open as long as it would in the daemon.
IDLE_SECONDS = 75.0
# How long the figures of answered calls, and the records already stored with MLflow's writes,
# wait to be sent to the daemon together: a message per call woke both processes for nothing
# (on 2 cores the daemon's share of a training loop's writes showed in every call).
BATCH_DELAY = 0.5
# How long calls stay on threads after a sign that the worker's connections are used at once.
SHARED_SECONDS = 1.0
# What a training loop sends step after step, each bounded by the body limit: a call that can
# run long (a search, a metric's whole history) keeps the event loop free for other requests.
INLINE_ACTIONS = frozenset(
    f"{SERVICE}:{name}"
    for name in ("LogMetric", "LogBatch", "LogParam", "SetTag", "UpdateRun", "GetRun")
)
# Stored records are sent sooner once they add up to this many bytes (a packet holds MAX_MESSAGE).
STORED_BATCH_BYTES = 256 * 1024
FLASK_API_PREFIXES = ("/api/2.0/mlflow/", "/api/3.0/mlflow/")
LANE_METHODS = frozenset({"GET", "POST", "PATCH", "DELETE"})
# Headers that must not repeat in a request the lane takes: a duplicate could be read one way
# here and another way by MLflow, or by the gateway.
SINGLE = frozenset(
    {"content-length", "authorization", "host", ARN_HEADER, APP_ARN_HEADER, "content-type"}
)
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")

WsgiApp = Callable[..., Any]
INTERNAL = b'{"error_code": "INTERNAL_ERROR", "message": "The tracking server failed."}'
NOT_RECORDED_ANSWER = json.dumps(
    {"error_code": RESOURCE_EXHAUSTED, "message": NOT_RECORDED}
).encode()
AWAY_ANSWER = json.dumps(
    {"error_code": "TEMPORARILY_UNAVAILABLE", "message": NOT_RECORDED_WHILE_AWAY}
).encode()


class Unfit(Exception):
    """A request the lane does not serve: it goes back to the gateway."""


class NotRecorded(Exception):
    """The daemon could not record a write's data event; ``full``: for lack of space;
    ``away``: its database was away for a moment."""

    def __init__(self, full: bool, away: bool) -> None:
        super().__init__("the daemon could not record the data event")
        self.full = full
        self.away = away


@dataclass
class Head:
    method: str
    target: str
    headers: list[tuple[str, str]]
    length: int
    size: int  # bytes of the head itself, blank line included

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


def parse_head(buffer: bytes | bytearray) -> Head | None:
    """The request head at the start of ``buffer``, None while incomplete; Unfit when the lane
    would have to interpret anything unusual (the gateway's full HTTP parser does that)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_REQUEST_HEAD:
            raise Unfit
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    if any(len(line) > MAX_REQUEST_LINE for line in lines):
        raise Unfit  # the gateway's parser refuses it: the same answer on either path
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[1].startswith(b"/"):
        raise Unfit
    if not _TOKEN.fullmatch(parts[0]) or not parts[1].isascii() or b"#" in parts[1]:
        raise Unfit
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise Unfit
        headers.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    names = [name for name, _ in headers]
    if "transfer-encoding" in names or "expect" in names or "upgrade" in names:
        raise Unfit
    if any(names.count(name) > 1 for name in SINGLE):
        raise Unfit
    head = Head(parts[0].decode("ascii"), parts[1].decode("ascii"), headers, 0, end + 4)
    length = head.header("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > BODY_LIMIT:
            raise Unfit
        head.length = int(length)
    return head


class Lane:
    """The worker's end of its channel: adopts handed-over connections and serves them."""

    def __init__(
        self,
        channel: Channel,
        generation: Generation,
        wsgi_app: WsgiApp,
        is_native: Callable[[str, str], bool],
        stored: StoredEvents | None,
    ) -> None:
        self._channel = channel
        # None when MLflow's store is not one of its SQL databases: the daemon records then.
        self._stored = stored
        self._generation = generation
        self._app = wsgi_app
        self._is_native = is_native
        self._executor: ThreadPoolExecutor | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._sequence = 0
        self._connections: set[LaneConnection] = set()
        self._in_threads = 0  # MLflow calls running on the executor's threads
        self._shared_until = 0.0
        self._figures: list[tuple[int, int, float]] = []
        self._stored_records: list[bytes] = []  # each a record's JSON, as stored
        self._stored_bytes = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._channel.listen(loop, self._on_message, self._on_daemon_gone)
        if self._stored is not None:
            loop.create_task(self._send_left_over(self._stored))

    async def _send_left_over(self, stored: StoredEvents) -> None:
        assert self._loop is not None
        batch: list[bytes] = []
        size = 0
        for _event_id, record in await self._loop.run_in_executor(None, stored.left_over):
            batch.append(record.encode())
            size += len(batch[-1])
            if size >= STORED_BATCH_BYTES:
                self._send_stored(batch, again=True)
                batch, size = [], 0
        if batch:
            self._send_stored(batch, again=True)

    # channel -------------------------------------------------------------------------------

    def _on_message(self, message: Message, fd: int | None, payload: bytes) -> None:
        if message["t"] == "ack":
            ack = self._acks.pop(message["seq"], None)
            if ack is None or ack.done():
                return
            if message.get("failed"):
                full, away = bool(message.get("full")), bool(message.get("away"))
                ack.set_exception(NotRecorded(full, away))
            else:
                ack.set_result(None)
        elif message["t"] == "recorded" and self._stored is not None:
            self._stored.recorded(message["event_ids"])
        elif message["t"] == "conn" and fd is not None:
            self._adopt(Ticket.from_message(message), fd, payload)

    def _on_daemon_gone(self) -> None:
        # Nothing can be audited or handed back any more; the daemon's death ends this
        # process too (PR_SET_PDEATHSIG).
        for ack in self._acks.values():
            if not ack.done():
                ack.set_exception(ConnectionError("the daemon is gone"))
        for connection in list(self._connections):
            connection.abort()

    def _adopt(self, ticket: Ticket, fd: int, buffered: bytes) -> None:
        assert self._loop is not None
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(ticket.concurrency, thread_name_prefix="lane")

        async def adopt() -> None:
            assert self._loop is not None
            try:
                await self._loop.connect_accepted_socket(
                    lambda: LaneConnection(self, ticket, buffered), sock
                )
            except OSError:
                sock.close()
                self._send({"t": "closed", "ticket": ticket.id})

        self._loop.create_task(adopt())

    def _send(self, message: Message, fd: int | None = None, payload: bytes = b"") -> None:
        if not self._channel.closed:
            self._channel.send(message, fd, payload)

    def register(self, connection: LaneConnection) -> None:
        self._connections.add(connection)

    def _alone(self) -> bool:
        """Whether to call MLflow on the event loop's thread: for a connection that has had
        the worker to itself for a while (a training loop logging one call at a time), a
        thread would only add two hand-offs, ~0.3 ms of a 5 ms call, and overlap nothing.
        Concurrent calls go to threads, where one's commit can wait on the disk while
        another runs: a sign of them keeps that way for SHARED_SECONDS. A request on the
        worker's own socket (the gateway's, the UI's) waits at most for one such short call
        (INLINE_ACTIONS), as it would for the GIL's switch interval (5 ms) anyway."""
        assert self._loop is not None
        now = self._loop.time()
        busy = sum(connection.busy for connection in self._connections)
        if self._in_threads or busy > 1:
            self._shared_until = now + SHARED_SECONDS
        return now >= self._shared_until

    def closed(self, connection: LaneConnection) -> None:
        self._connections.discard(connection)
        self.flush()  # the daemon forgets the ticket's figures once told it is closed
        self._send({"t": "closed", "ticket": connection.ticket.id})

    def hand_back(self, connection: LaneConnection, sock: socket.socket, buffered: bytes) -> None:
        """Give the connection back to the gateway with what it sent that was not served."""
        self._connections.discard(connection)
        self.flush()
        copy = os.dup(sock.fileno())
        try:
            self._send({"t": "back", "ticket": connection.ticket.id}, copy, buffered)
        finally:
            os.close(copy)

    # deciding ------------------------------------------------------------------------------

    def route(self, ticket: Ticket, head: Head) -> tuple[str, str] | None:
        """The path MLflow would see and the action, if the lane may serve this request."""
        if self._generation.value() != ticket.generation or head.method not in LANE_METHODS:
            return None
        if ticket.prefix:
            if not head.target.startswith(ticket.prefix + "/"):
                return None
            upstream = head.target[len(ticket.prefix) :]
        elif ticket.arn in (head.header(ARN_HEADER), head.header(APP_ARN_HEADER)):
            upstream = head.target
        else:
            return None
        path = upstream.partition("?")[0]
        if not path.startswith(FLASK_API_PREFIXES) or self._is_native(head.method, unquote(path)):
            return None
        if not ticket.prefix and path == PRESIGNED_UPLOAD_PATH:
            return None  # the gateway answers it for an ARN caller
        authorization = head.header("authorization")
        if authorization is None:
            return None
        if ticket.signed is None and not hmac.compare_digest(
            authorization.encode("latin-1"), ticket.authorization.encode("latin-1")
        ):
            return None
        if head.length > ticket.body_limit:
            return None
        requirement = required_action(head.method, upstream)
        if requirement.action is None or requirement.action not in ticket.allowed:
            return None
        return upstream, requirement.action

    # serving -------------------------------------------------------------------------------

    async def serve(
        self, ticket: Ticket, head: Head, body: bytes, upstream: str, action: str
    ) -> tuple[bytes, bool] | None:
        """The response to send, and whether to close after it; None to hand back."""
        view = None if ticket.prefix else bucket_of(ticket.arn.rpartition("/")[2])
        if ticket.signed is not None and not signature_holds(ticket.signed, head, body):
            return None  # the gateway answers with AWS's reason
        if view is not None:  # an ARN caller: MLflow's locations in, S3's out (s3_view)
            body = from_s3_view(body, view)
        if request_problem(upstream, body, ticket.body_limit) is not None:
            return None
        assert self._loop is not None and self._executor is not None
        started = time.time()
        clock = time.perf_counter()
        record = None
        if ticket.audited and is_write(action):
            record = self._record(ticket, head, body, upstream, action, started)
        environ = self._environ(head, body, upstream)
        if self._alone() and action in INLINE_ACTIONS:
            status, headers, answer, stored = self._call_mlflow(environ, record)
        else:
            self._in_threads += 1
            try:
                status, headers, answer, stored = await self._loop.run_in_executor(
                    self._executor, self._call_mlflow, environ, record
                )
            finally:
                self._in_threads -= 1
        if record is not None:
            try:
                if stored is not None:
                    # Durable with MLflow's write: the daemon appends it with the next batch.
                    self._hold_stored(stored)
                    if status >= 400:  # the outcome of a failed write, as a second record
                        await self._recorded_now({**record, "event_id": None}, status, answer)
                else:
                    await self._recorded_now(record, status, answer)
            except NotRecorded as failure:
                if not (failure.full or failure.away):
                    raise
                if status < 400:  # applied, but not acknowledged without its record
                    headers = [("Content-Type", "application/json")]
                    if failure.full:
                        status, answer = INSUFFICIENT_STORAGE, NOT_RECORDED_ANSWER
                    else:
                        status, answer = HTTPStatus.SERVICE_UNAVAILABLE.value, AWAY_ANSWER
                        headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
        self._answered(ticket, status, time.perf_counter() - clock)
        if view is not None and any(
            k.lower() == "content-type" and "json" in v.lower() for k, v in headers
        ):
            answer = to_s3_view(answer, view)
        close = (head.header("connection") or "").lower() == "close"
        return _response(status, headers, answer, close), close

    def _answered(self, ticket: Ticket, status: int, seconds: float) -> None:
        self._figures.append((ticket.id, status, seconds))
        self._flush_later()

    def _hold_stored(self, record: bytes) -> None:
        self._stored_records.append(record)
        self._stored_bytes += len(record)
        if self._stored_bytes >= STORED_BATCH_BYTES:
            self.flush()
        else:
            self._flush_later()

    def _flush_later(self) -> None:
        if self._flush_timer is None:
            assert self._loop is not None
            self._flush_timer = self._loop.call_later(BATCH_DELAY, self.flush)

    def flush(self) -> None:
        """Send the daemon the figures and stored records held back so far."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._figures:
            self._send({"t": "done", "calls": self._figures})
            self._figures = []
        if self._stored_records:
            self._send_stored(self._stored_records, again=False)
            self._stored_records, self._stored_bytes = [], 0

    def _send_stored(self, records: list[bytes], again: bool) -> None:
        """Records stored with MLflow's writes, as a JSON array in the packet's payload: the
        lane encoded each one to store it, and need not encode it twice. ``again``: they may
        have reached the daemon before (sent by a worker that stopped before its ack)."""
        self._send({"t": "stored", "again": again}, payload=b"[" + b",".join(records) + b"]")

    def _record(
        self, ticket: Ticket, head: Head, body: bytes, upstream: str, action: str, started: float
    ) -> Message:
        """The write's data event as the daemon records it: everything it needs to say, since
        a copy stored in MLflow's database may reach the daemon after a restart."""
        kept = body if len(body) <= ticket.audited_body_limit else None
        return {
            "t": "audit",
            "event_id": str(uuid.uuid4()),
            "caller": ticket.caller,
            "source_ip": ticket.source_ip,
            "arn": ticket.arn,
            "action": action,
            "method": head.method,
            "path": upstream,
            "length": head.length if head.header("content-length") is not None else None,
            "body": kept.decode("latin-1") if kept is not None else None,
            "started": started,
            "user_agent": head.header("user-agent") or "",
            "status": None,
        }

    def _recorded_now(self, record: Message, status: int, answer: bytes) -> asyncio.Future[None]:
        """Have the daemon record the write with its outcome; done once that is durable."""
        assert self._loop is not None
        self._sequence += 1
        ack = self._loop.create_future()
        self._acks[self._sequence] = ack
        self._send(
            {**record, "seq": self._sequence, "status": status},
            payload=answer[:65536] if status >= 400 else b"",
        )
        return ack

    def _environ(self, head: Head, body: bytes, upstream: str) -> Environ:
        # The request as the gateway forwards it: its headers minus credentials and routing,
        # and the Host of the worker itself.
        path, _, query = upstream.partition("?")
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in head.headers
            if name not in STRIPPED_REQUEST and name != "content-length"
        ]
        # The body's own length: an ARN caller's body may have been changed (s3_view).
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"host", WORKER_HOST.encode()))
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": head.method,
            "scheme": "http",
            "path": unquote(path),
            "raw_path": path.encode("ascii"),
            "query_string": query.encode("ascii"),
            "root_path": "",
            "headers": headers,
            "server": (WORKER_HOST, 80),
            "client": ("127.0.0.1", 0),
        }
        # A plain dict for its HTTPScope (no "asgi" key, which it does not read) and a file for
        # its Body (which it only hands on as wsgi.input).
        return build_environ(scope, io.BytesIO(body))  # type: ignore[arg-type]

    def _call_mlflow(
        self, environ: Environ, record: Message | None
    ) -> tuple[int, list[tuple[str, str]], bytes, bytes | None]:
        """MLflow's answer, and ``record`` as stored with its write (None if it was not)."""
        stored = self._stored if record is not None else None
        encoded = ""
        if stored is not None:
            assert record is not None
            encoded = json.dumps(record, separators=(",", ":"))
            stored.offer(record["event_id"], encoded)
        try:
            status, headers, answer = self._call_flask(environ)
        finally:
            taken = stored is not None and stored.taken()  # never left for a later call
        return status, headers, answer, encoded.encode() if taken else None

    def _call_flask(self, environ: Environ) -> tuple[int, list[tuple[str, str]], bytes]:
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            started[:] = [status, headers]
            return chunks.append

        iterable = self._app(environ, start_response)
        try:
            chunks.extend(iterable)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        return int(started[0].split(" ", 1)[0]), started[1], b"".join(chunks)


def signature_holds(signed: dict[str, Any], head: Head, body: bytes) -> bool:
    """Whether a SigV4 request is signed by the ticket's key, for its day, region, service
    and session, within the allowed clock skew: what the gateway verified on the first."""
    if signed["expires_at"] is not None and signed["expires_at"] <= time.time():
        return False
    headers = CIMultiDict(head.headers)
    try:
        info = sigv4.parse_authorization(headers)
        if any(getattr(info, name) != signed[name] for name in SIGNED_SCOPE):
            return False
        sigv4.verify(
            info,
            bytes.fromhex(signed["key"]),
            head.method,
            head.target,
            headers,
            body,
            expected_service=signed["service"],
            expected_region=signed["region"],
        )
    except AwsError:
        return False
    return True


def _response(status: int, headers: list[tuple[str, str]], body: bytes, close: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in STRIPPED_RESPONSE]
    lines += [f"Content-Length: {len(body)}", f"Date: {formatdate(usegmt=True)}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class LaneConnection(asyncio.Protocol):
    """One handed-over client connection: requests in order, one at a time."""

    def __init__(self, lane: Lane, ticket: Ticket, buffered: bytes) -> None:
        self._lane = lane
        self.ticket = ticket
        # What the gateway had read and not served; taken before anything more is read.
        self._buffer = bytearray(buffered)
        self._transport: asyncio.Transport | None = None
        self.busy = False
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they are transports.
        self._transport = cast(asyncio.Transport, transport)
        self._lane.register(self)
        self._rearm()
        if self._buffer:
            self._next()

    def _rearm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(IDLE_SECONDS, self._on_idle)

    def _on_idle(self) -> None:
        if self._transport is not None and not self.busy and not self._buffer:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.busy:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._transport is not None:
            self._transport = None
            self._lane.closed(self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _next(self) -> None:
        try:
            head = parse_head(self._buffer)
            if head is None:
                return
            fit = self._lane.route(self.ticket, head)
            if fit is None:
                raise Unfit
        except Unfit:
            self._hand_back(bytes(self._buffer))
            return
        if len(self._buffer) < head.size + head.length:
            return  # the body is still arriving
        raw = bytes(self._buffer[: head.size + head.length])
        del self._buffer[: head.size + head.length]
        self.busy = True
        asyncio.get_running_loop().create_task(self._serve(head, raw, *fit))

    async def _serve(self, head: Head, raw: bytes, upstream: str, action: str) -> None:
        try:
            answer = await self._lane.serve(self.ticket, head, raw[head.size :], upstream, action)
        except ConnectionError:  # the daemon is gone: nothing can be recorded
            self.abort()
            return
        except Exception:
            # MLflow may have acted on it: answering is the only safe move, not handing back.
            log.exception("the fast lane failed on %s %s", head.method, upstream)
            answer = _response(500, [("Content-Type", "application/json")], INTERNAL, True), True
        transport = self._transport
        if transport is None:
            return
        if answer is None:
            self._hand_back(raw + bytes(self._buffer))
            return
        response, close = answer
        transport.write(response)
        self.busy = False
        self._rearm()
        if close:
            transport.close()
        elif self._buffer:
            self._next()

    def _hand_back(self, buffered: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.pause_reading()
        self._transport = None  # connection_lost must not report it closed: it lives on
        if self._idle is not None:
            self._idle.cancel()
        self._lane.hand_back(self, transport.get_extra_info("socket"), buffered)
        transport.abort()
