"""The egress proxy: the only way out for a tracking server's outbound HTTP(S) calls.

Workers have no network of their own (runtime.sandbox). Their HTTP clients are pointed at a
forwarder inside the sandbox (runtime.egress_forwarder), which relays to this proxy's Unix
socket. The proxy speaks the two forms HTTP clients use: ``CONNECT host:port`` for HTTPS (the
TLS session then runs end to end, between MLflow and the provider) and an absolute-form request
(``POST http://host:port/path``) for plain HTTP, answered on a connection of its own.

Each request names its server by the proxy credentials of its URL (``Proxy-Authorization``:
the server's name and a key the daemon derives from its master key and the server's id, so
another process, or another server, cannot pass for it). Then:

- the server's egress switch (tag ``mlfleet:egress`` = ``off``) is checked as the server is
  now, not as it was when its workers started;
- the host is resolved here and every address is checked (egress.policy) before one is
  connected to, that same address: a name that resolves elsewhere on a second lookup (DNS
  rebinding) gains nothing;
- each connection, made or refused, is a data event of the server (``OutboundConnection``).

A refusal is an HTTP 403 whose body says why; MLflow passes it on to its caller as the
provider's error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mlfleet.audit.trail import DataEvent
from mlfleet.auth.identity import Principal
from mlfleet.auth.secrets import SecretBox
from mlfleet.egress.policy import EgressPolicy, egress_on
from mlfleet.runtime.egress_forwarder import DIRECT_ENV, KEY_ENV, SOCKET_ENV, USER_ENV, splice
from mlfleet.runtime.proxy_request import MAX_HEAD_BYTES, Head, Refused

CONNECT_TIMEOUT_SECONDS = 10.0
RESOLVE_TIMEOUT_SECONDS = 5.0
EVENT_NAME = "mlfleet-mlflow:OutboundConnection"
# How the trail names the one who connects: the tracking server, not a caller of it.
SERVICE_NAME = "sagemaker-mlflow.amazonaws.com"
_TAG_HINT = "tag mlfleet:egress = off"


def egress_key(box: SecretBox, server_id: str) -> str:
    """The proxy password of a server: its workers get it in their environment."""
    return box.derive(f"egress:{server_id}").hex()


@dataclass(frozen=True)
class WorkerEgress:
    """What a server's workers are given to reach the proxy."""

    socket_path: Path
    box: SecretBox

    def environment(self, server_id: str, name: str, direct: tuple[str, ...]) -> dict[str, str]:
        """The worker's variables: the proxy's socket, its credentials, and the hosts (its S3
        store's) it reaches without the proxy."""
        return {
            SOCKET_ENV: str(self.socket_path),
            USER_ENV: name,
            KEY_ENV: egress_key(self.box, server_id),
            DIRECT_ENV: ",".join(direct),
        }


@dataclass(frozen=True)
class EgressServer:
    """What the proxy needs to know of a tracking server."""

    id: str
    arn: str
    tags: tuple[dict[str, str], ...]


ServerByName = Callable[[str], EgressServer | None]


class EgressProxy:
    def __init__(
        self,
        socket_path: Path,
        policy: EgressPolicy,
        box: SecretBox,
        server_by_name: ServerByName,
        record: Callable[[DataEvent], Awaitable[None]],
    ) -> None:
        self.socket_path = socket_path
        self._policy = policy
        self._box = box
        self._server_by_name = server_by_name
        self._record = record
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        # Inside the daemon's private run dir; the sandbox user, whom bubblewrap shows only
        # this folder, must be able to connect (who connects is told by the key, not the uid).
        self.socket_path.parent.chmod(0o711)
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=MAX_HEAD_BYTES
        )
        self.socket_path.chmod(0o666)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._relays):
            task.cancel()
        self.socket_path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._relays.discard(task)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = await reader.readuntil(b"\r\n\r\n")
        started = time.time()
        server: EgressServer | None = None
        host, port, path = "", 0, ""
        try:
            head = Head.parse(raw[:-4])
            server = self._authenticate(head)
            host, port, path = _destination(head)
            if not egress_on(server.tags):
                raise Refused(403, f"outbound connections of this server are off ({_TAG_HINT})")
            address, upstream_reader, upstream_writer = await self._connect(
                host, port, plain_http=head.method != "CONNECT"
            )
        except Refused as refused:
            if server is not None:
                await self._record(_event(server, started, host, port, path, None, refused))
            writer.write(refused.response("mlfleet egress"))
            await writer.drain()
            return
        await self._record(_event(server, started, host, port, path, address, None))
        try:
            if head.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream_writer.write(head.origin_form(path))
            await splice(reader, writer, upstream_reader, upstream_writer)
        finally:
            upstream_writer.close()

    def _authenticate(self, head: Head) -> EgressServer:
        given = head.header(b"proxy-authorization") or b""
        scheme, _, encoded = given.partition(b" ")
        try:
            name, _, key = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name, key = "", ""
        server = self._server_by_name(name) if scheme.lower() == b"basic" and name else None
        if server is None or not hmac.compare_digest(key, egress_key(self._box, server.id)):
            raise Refused(407, "proxy credentials missing or wrong")
        return server

    async def _connect(
        self, host: str, port: int, plain_http: bool
    ) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
        if not self._policy.may_admit(host, port):
            raise Refused(403, self._policy.unlisted(host, port))
        loop = asyncio.get_running_loop()
        try:
            found = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS
            )
        except (OSError, UnicodeError, TimeoutError) as exc:
            raise Refused(502, f"cannot resolve {host}: {exc or 'no answer in time'}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        refusals = [self._policy.refusal(host, a, port, plain_http) for a in addresses]
        allowed = [a for a, why in zip(addresses, refusals, strict=True) if why is None]
        if not allowed:
            raise Refused(403, next(filter(None, refusals), f"{host} has no address"))
        failure: OSError | None = None
        for address in allowed:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(address, port), CONNECT_TIMEOUT_SECONDS
                )
            except (OSError, TimeoutError) as exc:
                failure = OSError(str(exc) or type(exc).__name__)
                continue
            return address, reader, writer
        raise Refused(502, f"cannot connect to {host}:{port}: {failure}")


def _destination(head: Head) -> tuple[str, int, str]:
    """The host, port and (plain HTTP) path a request asks for."""
    if head.method == "CONNECT":
        host, sep, number = head.target.rpartition(":")
        if not sep or not number.isdigit():
            raise Refused(400, "CONNECT needs host:port")
        return host.strip("[]"), int(number), ""
    parts = urlsplit(head.target)
    if parts.scheme != "http" or not parts.hostname:
        raise Refused(400, "only CONNECT and absolute http:// requests are proxied")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise Refused(400, "a malformed port") from exc
    return parts.hostname, port, parts.path or "/"


def _event(
    server: EgressServer,
    started: float,
    host: str,
    port: int,
    path: str,
    address: str | None,
    refused: Refused | None,
) -> DataEvent:
    parameters: dict[str, object] = {"host": host, "port": port}
    if path:
        parameters["path"] = path
    if address:
        parameters["address"] = address
    return DataEvent(
        principal=Principal(server.arn, server.id, SERVICE_NAME, kind="service"),
        action=EVENT_NAME,
        resource=server.arn,
        time=started,
        source_ip=None,
        user_agent=SERVICE_NAME,
        request_id=str(uuid.uuid4()),
        parameters=parameters,
        status=refused.status if refused else 200,
        error_code="EgressDenied" if refused else None,
        error_message=str(refused) if refused else None,
    )
