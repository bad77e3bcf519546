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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from typing import Any

# Set by the daemon in a worker's environment (fleet.reconciler).
SOCKET_ENV = "MLFLEET_EGRESS_SOCKET"
USER_ENV = "MLFLEET_EGRESS_USER"
KEY_ENV = "MLFLEET_EGRESS_KEY"
# Hosts the worker reaches directly (its S3 store's endpoint), comma-separated.
DIRECT_ENV = "MLFLEET_EGRESS_DIRECT"


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

    def __init__(self, listening: socket.socket, proxy_socket: str) -> None:
        self.listening = listening
        self.proxy_socket = proxy_socket
        self.server: asyncio.Server | None = None

    async def serve(self) -> None:
        """Relay each connection on the worker's own event loop: a thread of its own would
        wait for the GIL at every hop while MLflow's loop runs (milliseconds per call)."""

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                proxy_reader, proxy_writer = await asyncio.open_unix_connection(self.proxy_socket)
            except OSError:
                writer.close()
                return
            try:
                await splice(reader, writer, proxy_reader, proxy_writer)
            finally:
                proxy_writer.close()
                writer.close()

        self.server = await asyncio.start_server(relay, sock=self.listening)


def _trusting_env(init: Any) -> Any:
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, trust_env: bool = True, **kwargs: Any) -> None:
        init(self, *args, trust_env=trust_env, **kwargs)

    return __init__


def install() -> Forwarder | None:
    """Point this process's HTTP clients at the egress proxy, when the daemon gave one: its
    forwarder, to be served on the worker's event loop."""
    socket_path = os.environ.get(SOCKET_ENV)
    if not socket_path:
        return None
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(64)
    port = listening.getsockname()[1]
    url = f"http://{os.environ[USER_ENV]}:{os.environ[KEY_ENV]}@127.0.0.1:{port}"
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
    return Forwarder(listening, socket_path)
