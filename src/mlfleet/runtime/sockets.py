"""Where supervised processes listen: Unix sockets in a folder only the daemon's user can open.

No worker or scoring process listens on TCP, so no other local process (another user's, or a
tenant's model code) can reach one: the gateway, which authenticates and authorizes every
call, is the only way in. Each server or endpoint has a folder of its own under ``<run-dir>``
(0700), holding one ``<process>.sock`` per process; a sandbox (runtime.sandbox) is given only
its own folder.

aiohttp pools connections per URL host, so a process's URL names its socket in its host,
``<process>.<folder>`` (both made of ``[a-z0-9-]``), and ``SocketConnector`` maps it back to
``<run-dir>/<folder>/<process>.sock``: one pooled client reaches every process.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import aiohttp
from aiohttp.client_exceptions import UnixClientConnectorError
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.helpers import ceil_timeout
from aiohttp.tracing import Trace
from yarl import URL

# sun_path holds 108 bytes with its terminating NUL.
MAX_SOCKET_PATH = 107
# The longest socket path below a run dir: "/<folder>/<process>.sock" (see folder_of).
_LONGEST_BELOW = len("/e-0123456789abcdef/i-0123456789ab-99.sock")
_LABEL = re.compile(r"[a-z0-9-]{1,63}")
# What MLflow's host check (and Host-based URLs) see: one of its default allowed hosts.
WORKER_HOST = "localhost"


def run_dir_for(data_dir: Path) -> Path:
    """``<data-dir>/run``, or a private temporary folder when socket paths there would be too
    long for the kernel (a deeply nested data dir)."""
    preferred = data_dir / "run"
    if len(str(preferred.absolute())) + _LONGEST_BELOW <= MAX_SOCKET_PATH:
        preferred.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(preferred, 0o700)
        return preferred
    # mkdtemp makes a fresh 0700 folder that no one else can have prepared.
    return Path(tempfile.mkdtemp(prefix="mlfleet-run-"))


def folder_of(kind: str, name: str) -> str:
    """A socket folder's name for a server id or an endpoint name: a short DNS label."""
    digest = hashlib.blake2s(name.encode(), digest_size=8).hexdigest()
    return f"{kind}-{digest}"


class SocketConnector(aiohttp.BaseConnector):
    """Connections to the processes' Unix sockets, pooled per socket."""

    def __init__(self, run_dir: Path, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._run_dir = run_dir

    def path_of(self, host: str) -> str:
        process, _, folder = host.partition(".")
        if not (_LABEL.fullmatch(process) and _LABEL.fullmatch(folder)):
            raise aiohttp.InvalidURL(host)
        return str(self._run_dir / folder / f"{process}.sock")

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        path = self.path_of(req.url.raw_host or "")
        try:
            async with ceil_timeout(timeout.sock_connect, ceil_threshold=timeout.ceil_threshold):
                _, proto = await self._loop.create_unix_connection(self._factory, path)
        except OSError as exc:
            if exc.errno is None and isinstance(exc, TimeoutError):
                raise
            raise UnixClientConnectorError(path, req.connection_key, exc) from exc
        return proto


def socket_url(folder: str, process: str, target: str) -> URL:
    """The URL of ``target`` (a path as the client sent it, encoded) on one process.

    Encoded, so that yarl neither resolves dot segments nor re-quotes: the process must get
    the very path the gateway checked.
    """
    return URL(f"http://{process}.{folder}{target}", encoded=True)


def socket_session(run_dir: Path, **kwargs: object) -> aiohttp.ClientSession:
    """A pooled client for the processes' sockets; every request carries ``Host: localhost``."""
    connector = SocketConnector(run_dir, limit=0, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"Host": WORKER_HOST},
        **kwargs,  # type: ignore[arg-type]
    )
