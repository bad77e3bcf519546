"""Inside a worker: its HTTP clients' proxy, a loopback port relayed to the daemon's egress proxy.

A confined worker has a network namespace of its own with loopback only, and HTTP clients
take a proxy by TCP address (``HTTPS_PROXY``), not by Unix socket. So the worker listens on
an ephemeral loopback port of its own namespace, on its own event loop, and relays each
connection to the egress proxy's socket, which the sandbox shows it. The proxy authenticates
the server by the credentials in the proxy URL and decides (egress.proxy).

``install`` also makes aiohttp's sessions take the proxy from the environment, as requests
and httpx do by default: MLflow's AI gateway calls providers through aiohttp sessions it
creates without ``trust_env``, and they would otherwise try to connect directly (and fail,
with no network).

The forwarder also serves the one host that is not outbound: ``OWN_GATEWAY_HOST``, the
server's own AI gateway, for MLflow's jobs (runtime.mlflow_jobs), which reach the gateway over
HTTP at ``MLFLOW_GATEWAY_URI``. A request for it, with the server's proxy credentials (the
forwarder listens on the host's loopback where there is no sandbox), is sent to the worker's
own socket, and only below ``/gateway/``: a tenant who points an endpoint at that name gains
nothing beyond calling the server's endpoints, which an endpoint call allows already. A few at a
time: an endpoint pointed at itself would otherwise call itself until the worker ran out of
connections.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import os
import socket
from typing import Any
from urllib.parse import urlsplit

from mlfleet.runtime.proxy_request import MAX_HEAD_BYTES, Head, Refused
from mlfleet.runtime.sockets import WORKER_HOST

# Set by the daemon in a worker's environment (fleet.reconciler).
SOCKET_ENV = "MLFLEET_EGRESS_SOCKET"
USER_ENV = "MLFLEET_EGRESS_USER"
KEY_ENV = "MLFLEET_EGRESS_KEY"
# Hosts the worker reaches directly (its S3 store's endpoint), comma-separated.
DIRECT_ENV = "MLFLEET_EGRESS_DIRECT"
# The server's own AI gateway, as MLflow's jobs reach it through the proxy variables.
OWN_GATEWAY_HOST = "gateway.mlfleet.internal"
OWN_GATEWAY_PREFIX = "/gateway/"
MAX_OWN_GATEWAY_CALLS = 8


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy one direction of a relayed connection, passing its end on."""
    with contextlib.suppress(ConnectionError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()


async def splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Relay two connections both ways until both directions have ended."""
    await asyncio.gather(_pump(a_reader, b_writer), _pump(b_reader, a_writer))


class Forwarder:
    """The forwarder's listening socket, bound before MLflow starts, and where it relays to."""

    def __init__(
        self, listening: socket.socket, proxy_socket: str, credentials: bytes, own_socket: str
    ) -> None:
        self.listening = listening
        self.proxy_socket = proxy_socket
        self.server: asyncio.Server | None = None
        self._credentials = credentials  # the Proxy-Authorization value the worker sends
        self._own_socket = own_socket
        self._own_calls = 0

    async def serve(self) -> None:
        """Relay each connection on the worker's own event loop: a thread of its own would
        wait for the GIL at every hop while MLflow's loop runs (milliseconds per call)."""
        self.server = await asyncio.start_server(
            self._relay, sock=self.listening, limit=MAX_HEAD_BYTES
        )

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
            request = self._own_gateway_request(raw)
        except Refused as refused:
            writer.write(refused.response("mlfleet"))
            writer.close()
            return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        if request is None:
            await self._splice_to(self.proxy_socket, raw, reader, writer)
            return
        self._own_calls += 1
        try:
            if self._own_calls > MAX_OWN_GATEWAY_CALLS:
                writer.write(Refused(503, "the server's own gateway is busy").response("mlfleet"))
                writer.close()
                return
            await self._splice_to(self._own_socket, request, reader, writer)
        finally:
            self._own_calls -= 1

    @staticmethod
    async def _splice_to(
        path: str, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(path)
        except OSError:
            writer.close()
            return
        try:
            upstream_writer.write(head)
            await splice(reader, writer, upstream_reader, upstream_writer)
        finally:
            upstream_writer.close()
            writer.close()

    def _own_gateway_request(self, raw: bytes) -> bytes | None:
        """The request to send to the worker's own socket, or None for the egress proxy."""
        head = Head.parse(raw[:-4])
        if head.method == "CONNECT":
            return None
        parts = urlsplit(head.target)
        if parts.hostname != OWN_GATEWAY_HOST:
            return None
        if not hmac.compare_digest(head.header(b"proxy-authorization") or b"", self._credentials):
            raise Refused(407, "proxy credentials missing or wrong")
        segments = parts.path.split("/")[1:]
        # Dot segments and escapes could reach another route than the one checked.
        canonical = "%" not in parts.path and not {"", ".", ".."} & set(segments)
        if not (parts.path.startswith(OWN_GATEWAY_PREFIX) and canonical):
            raise Refused(403, f"only the AI gateway's routes ({OWN_GATEWAY_PREFIX}) are served")
        return head.origin_form(parts.path, host=WORKER_HOST.encode())


def _trusting_env(init: Any) -> Any:
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, trust_env: bool = True, **kwargs: Any) -> None:
        init(self, *args, trust_env=trust_env, **kwargs)

    return __init__


def install(own_socket: str) -> Forwarder | None:
    """Point this process's HTTP clients at the egress proxy, when the daemon gave one: its
    forwarder, to be served on the worker's event loop. ``own_socket`` is the worker's."""
    socket_path = os.environ.get(SOCKET_ENV)
    if not socket_path:
        return None
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(64)
    port = listening.getsockname()[1]
    user, key = os.environ[USER_ENV], os.environ[KEY_ENV]
    url = f"http://{user}:{key}@127.0.0.1:{port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ[name] = url
    direct = os.environ.get(DIRECT_ENV, "")
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = direct
    # The proxy checks each address at connect time; MLflow's own check would refuse the
    # proxy's loopback address and any private provider the operator allowed.
    os.environ["MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS"] = "true"
    # Plain http too (a model server on the operator's network): the proxy lets it through
    # only to an address the operator allowed.
    os.environ["MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES"] = "https,http"
    # The UI's model lists come from the catalog MLflow ships: fetching newer ones from GitHub
    # (per provider, retried) is no call of a tenant's and would wait minutes where it is refused.
    os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
    import aiohttp

    aiohttp.ClientSession.__init__ = _trusting_env(aiohttp.ClientSession.__init__)  # type: ignore[method-assign]
    credentials = b"Basic " + base64.b64encode(f"{user}:{key}".encode())
    return Forwarder(listening, socket_path, credentials, own_socket)
