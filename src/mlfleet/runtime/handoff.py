"""The channel between the daemon and one MLflow worker, over which client connections move.

A client's keep-alive connection can be handed from the daemon's gateway to the worker that
serves it, and back (see ``mlfleet.gateway.handover`` and ``mlfleet.runtime.fast_lane``). Both
ends talk over a ``SOCK_SEQPACKET`` socket pair made when the worker is spawned: one JSON
message per packet, a connection's socket riding along as ``SCM_RIGHTS``. No path on disk, so
no other local user can hand a worker anything.

A packet is a JSON object, a newline, and raw bytes (what a connection had buffered).

``Generation`` is a counter in memory the daemon shares with every worker. The daemon bumps it
on any change that could alter what a handed-over connection may do (an IAM change, a server's
tags); a worker compares it before each request, so the change holds for the very next request
without a message race.
"""

from __future__ import annotations

import array
import asyncio
import json
import mmap
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

# Bytes a connection had buffered travel with it; the fast lane never buffers more than this.
MAX_MESSAGE = 1024 * 1024
_COUNTER = struct.Struct("<Q")
_FD = array.array("i")

Message = dict[str, Any]


def channel_pair() -> tuple[Channel, int]:
    """The daemon's end and the (inheritable) descriptor of the worker's end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Large enough that a burst of small messages never blocks the sending event loop.
    for end in (ours, theirs):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MAX_MESSAGE)
    return Channel(ours), theirs.detach()


class Channel:
    """One end of a daemon-worker channel: messages out, a callback for messages in."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_message: Callable[[Message, int | None, bytes], None] | None = None
        self._on_closed: Callable[[], None] | None = None
        # The daemon's audit writer thread sends acks too: closing waits for a send under way,
        # which could otherwise reach another socket given the same descriptor number.
        self._sending = threading.Lock()
        self.closed = False

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        return cls(socket.socket(fileno=fd))

    def send(self, message: Message, fd: int | None = None, payload: bytes = b"") -> None:
        """Send one message (and a descriptor, which the receiver then owns a copy of)."""
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n" + payload
        with self._sending:
            socket.send_fds(self._sock, [data], [fd] if fd is not None else [])

    def listen(
        self,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Message, int | None, bytes], None],
        on_closed: Callable[[], None],
    ) -> None:
        """Call ``on_message`` for each message as it arrives, ``on_closed`` once at the end
        (the other end gone, or this one closed: at once if it already is, as when its worker
        died just before)."""
        if self.closed:
            on_closed()
            return
        self._loop = loop
        self._on_message = on_message
        self._on_closed = on_closed
        loop.add_reader(self._sock.fileno(), self._deliver)

    def _deliver(self) -> None:
        """Pass on every message waiting in the socket."""
        assert self._on_message is not None
        while not self.closed:
            try:
                data, fds = self._receive()
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:  # the other end is gone
                for fd in fds:
                    os.close(fd)
                self._shut()
                return
            head, _, payload = data.partition(b"\n")
            self._on_message(json.loads(head), fds[0] if fds else None, payload)

    def _receive(self) -> tuple[bytes, list[int]]:
        # socket.recv_fds would do, but before Python 3.12 it drops its flags (and blocks).
        # Close-on-exec at once: a received connection must never be inherited by a process
        # the daemon spawns next (uvloop's spawn closes no descriptors), or another tenant's
        # worker would hold it.
        data, ancillary, _flags, _addr = self._sock.recvmsg(
            MAX_MESSAGE,
            socket.CMSG_SPACE(_FD.itemsize),
            socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC,
        )
        fds = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        return data, list(fds)

    def close(self) -> None:
        """Close, having passed on what the other end sent before: a worker's last words
        (records it held back, say) are in the socket when the daemon sees it exit."""
        if not self.closed and self._on_message is not None:
            self._deliver()
        self._shut()

    def _shut(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        with self._sending:
            self._sock.close()
        if self._on_closed is not None:
            self._on_closed()


# The fields of a SigV4 signature's scope (sigv4.SignedRequestInfo) that every request on a
# handed-over connection must repeat: the same key, session, day, region and service.
SIGNED_SCOPE = ("access_key_id", "date", "region", "service", "security_token")


@dataclass(frozen=True)
class Ticket:
    """What the gateway settled about a connection it hands over, for the worker to hold to."""

    id: int
    # For HTTP Basic, the Authorization header the gateway verified: a request must carry
    # exactly this one. "" for SigV4, whose header changes with every request.
    authorization: str
    # "/mlflow/<name>" for a TrackingServerUrl connection; "" when routed by the ARN header.
    prefix: str
    arn: str
    # The sagemaker-mlflow actions the caller is allowed on this server, that the lane may serve.
    allowed: frozenset[str]
    # Whether writes are recorded as data events (durable before the answer leaves).
    audited: bool
    # Who is calling, from where: what a data event says of the caller (Principal's fields).
    caller: dict[str, Any]
    source_ip: str | None
    generation: int
    body_limit: int
    audited_body_limit: int
    # MLflow calls at once from all of the worker's handed-over connections.
    concurrency: int
    # For SigV4 (the sagemaker-mlflow plugin), what each request's signature must match: the
    # access key, the day, region and service of its scope, the session token, when the
    # session expires, and the signing key of that scope (not the secret: it signs only
    # sagemaker-mlflow requests of that day).
    signed: dict[str, Any] | None = None

    def to_message(self) -> Message:
        fields = asdict(self)
        fields["allowed"] = sorted(self.allowed)
        return {"t": "conn", **fields}

    @classmethod
    def from_message(cls, message: Message) -> Ticket:
        fields = {k: v for k, v in message.items() if k != "t"}
        return cls(**{**fields, "allowed": frozenset(fields["allowed"])})


class Generation:
    """A counter shared with the workers through a memfd they inherit."""

    def __init__(self, fd: int | None = None, writable: bool = True) -> None:
        if fd is None:
            fd = os.memfd_create("mlfleet-generation")
            os.ftruncate(fd, _COUNTER.size)
        self.fd = fd
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        self._map = mmap.mmap(fd, _COUNTER.size, access=access)

    def value(self) -> int:
        return int(_COUNTER.unpack_from(self._map)[0])

    def bump(self) -> None:
        _COUNTER.pack_into(self._map, 0, self.value() + 1)
