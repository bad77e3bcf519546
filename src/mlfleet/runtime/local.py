"""Tracking servers as local MLflow processes, supervised by the daemon.

A server of size N runs N single-worker uvicorn processes (see ``WORKERS_BY_SIZE``), each on its
own Unix socket (runtime.sockets) and confined to its server's database and artifacts
(runtime.sandbox); the gateway spreads requests over them. A worker that dies is restarted at
once, and with exponential backoff if it keeps dying, for as long as its server should run.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from mlfleet.runtime.handoff import Channel, Generation, channel_pair
from mlfleet.runtime.mlflow_worker import BACKEND_STORE_ENV
from mlfleet.runtime.sandbox import Sandbox, Spawned, View
from mlfleet.runtime.sockets import folder_of, socket_session, socket_url
from mlfleet.runtime.warm import WORKER_MODULE, Spare, WarmPool

log = logging.getLogger(__name__)

WORKERS_BY_SIZE = {"Small": 1, "Medium": 2, "Large": 4}
HEALTH_TIMEOUT_SECONDS = 180.0
STOP_GRACE_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 30.0
# A worker that stayed up this long is considered healthy again: its backoff resets.
STABLE_AFTER_SECONDS = 60.0


@dataclass(frozen=True)
class ServerSpec:
    backend_store_uri: str
    artifacts_destination: str
    workers: int
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    # What the workers see besides the software (their database's and artifacts' folders,
    # their MLflow release's environment).
    view: View = field(default_factory=View)
    # The interpreter of the server's MLflow release (versions.environments).
    python: str = sys.executable


class StartError(Exception):
    """A worker exited or never became healthy; the message carries its log tail."""


# Who starts first when starts queue: a server's first worker (it makes the server serve),
# then the others (capacity).
FIRST, MORE = 0, 1


class StartSlots:
    """How many processes may be starting at once. A start is mostly the import of MLflow, one
    core's work for seconds: more at once than there are cores makes each take longer and none
    serve sooner. Waiting starts go by priority (``FIRST`` before ``MORE``), then in order."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        if self._free > 0 and not self._queue:
            self._free -= 1
        else:
            turn = asyncio.get_running_loop().create_future()
            heapq.heappush(self._queue, (priority, next(self._order), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # given the slot, then cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._queue:
            _, _, turn = heapq.heappop(self._queue)
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


class SupervisedProcess(ABC):
    """One process serving HTTP on a Unix socket, which the daemon starts confined,
    health-checks and restarts when it dies.

    Subclasses say what to run and what it may see; the supervision (start, health, restart
    with backoff, stop) is the same for tracking-server workers and endpoint instances. The
    socket is ``<run-dir>/<folder>/<name>.sock``; the folder is the process's group's own.
    """

    # The GET path that answers 200 once the process serves.
    health_path = "/health"
    what = "MLflow worker"

    def __init__(self, sandbox: Sandbox, folder: str, name: str, log_dir: Path) -> None:
        self.name = name
        self.folder = folder
        self.socket_dir = sandbox.run_dir / folder
        self.socket_path = self.socket_dir / f"{name}.sock"
        self.healthy = False
        self._sandbox = sandbox
        self._spawned: Spawned | None = None
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._slots: StartSlots | None = None
        self._log_dir = log_dir
        self.log_path = log_dir / f"{name}.log"

    def url(self, target: str) -> URL:
        """The URL of ``target`` on this process, for a ``socket_session`` client."""
        return socket_url(self.folder, self.name, target)

    @abstractmethod
    def command(self) -> list[str]:
        """The program and arguments to run (serving on ``self.socket_path``)."""

    @abstractmethod
    def environment(self) -> dict[str, str]:
        """The process's environment (added to a minimal one: runtime.sandbox)."""

    @abstractmethod
    def view(self) -> View:
        """What the process may see besides its software and its socket's folder."""

    def inherited_fds(self) -> tuple[int, ...]:
        """Descriptors the process inherits (named in its command)."""
        return ()

    def _prepare(self) -> View:
        """Make the process's log and socket folders ready: what it will see."""
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        view = self.view()
        view = View((*view.writable, self.socket_dir), view.readable, view.network)
        self._sandbox.give(*view.writable)
        return view

    async def _spawn(self) -> None:
        view = self._prepare()
        with self.log_path.open("ab") as logfile:
            spawning = asyncio.ensure_future(
                self._sandbox.spawn(
                    self.command(), view, self.environment(), logfile.fileno(), self.inherited_fds()
                )
            )
            try:
                self._spawned = await asyncio.shield(spawning)
            except asyncio.CancelledError:
                # Cancelled while the sandbox starts (its server is going away): let it finish
                # starting, so that it is known and stopped like any other, never left behind.
                self._spawned = await spawning
                await self._terminate()
                raise

    def log_tail(self, limit: int = 1500) -> str:
        try:
            data = self.log_path.read_bytes()[-limit:]
        except OSError:
            return ""
        return data.decode(errors="replace").strip()

    async def _wait_healthy(self, http: aiohttp.ClientSession) -> None:
        assert self._spawned is not None
        proc = self._spawned.process
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
        url = self.url(self.health_path)
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise StartError(
                    f"{self.what} exited with code {proc.returncode}: {self.log_tail()}"
                )
            if self.socket_path.exists():
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
            await asyncio.sleep(0.05)
        raise StartError(f"{self.what} not healthy after {HEALTH_TIMEOUT_SECONDS:.0f} s")

    async def start(
        self, http: aiohttp.ClientSession, slots: StartSlots | None = None, priority: int = FIRST
    ) -> None:
        self._stopping = False
        self._slots = slots
        async with slots.slot(priority) if slots else contextlib.nullcontext():
            await self._spawn()
            try:
                await self._wait_healthy(http)
            except StartError:
                await self._terminate()
                raise
        self.healthy = True
        self._supervisor = asyncio.create_task(self._supervise(http))

    async def _supervise(self, http: aiohttp.ClientSession) -> None:
        # A process that ran stably is replaced at once: its server's requests are waiting.
        backoff = 0.0
        while True:
            assert self._spawned is not None
            proc = self._spawned.process
            started = time.monotonic()
            code = await proc.wait()
            self.healthy = False
            if self._stopping:
                return
            if time.monotonic() - started > STABLE_AFTER_SECONDS:
                backoff = 0.0
            log.warning(
                "%s %s/%s (pid %s) exited with %s; restarting in %.0f s",
                self.what,
                self.folder,
                self.name,
                proc.pid,
                code,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF_SECONDS)
            if self._stopping:
                return
            try:
                async with self._slots.slot(FIRST) if self._slots else contextlib.nullcontext():
                    await self._spawn()
                    await self._wait_healthy(http)
            except (StartError, OSError) as exc:
                log.warning("restarting %s %s failed: %s", self.what, self.name, exc)
                continue
            self.healthy = True

    async def _terminate(self) -> None:
        if self._spawned is None or self._spawned.process.returncode is not None:
            return
        proc = self._spawned.process
        self._spawned.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        await self._terminate()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self.healthy = False
        self.socket_path.unlink(missing_ok=True)


OnChannel = Callable[[Channel], None] | None


class Worker(SupervisedProcess):
    """One single-process uvicorn serving a tracking server's MLflow (mlflow_worker).

    Each run of the process gets a new ``channel`` (runtime.handoff) over which the gateway
    hands it client connections; the old one closes with the process it led to.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        server_id: str,
        index: int,
        spec: ServerSpec,
        generation: Generation,
        on_channel: OnChannel,
        warm: WarmPool | None = None,
    ) -> None:
        super().__init__(sandbox, folder_of("s", server_id), f"w-{index}", spec.log_dir)
        self.spec = spec
        # Spares to start from (runtime.warm); a cold start where there is none.
        self._warm = warm
        # One worker per server runs its MLflow jobs: MLflow's recovery, at a runner's start,
        # takes a job left running by an earlier runner for one that died (runtime.mlflow_jobs).
        self.runs_jobs = index == 0
        self._generation = generation
        self._on_channel = on_channel
        self.channel: Channel | None = None
        self._their_end: int | None = None

    async def _spawn(self) -> None:
        self._close_channel()
        if self._warm is not None:
            key = self._warm.key_of(self.spec.python, self.spec.view)
            spare = self._warm.take(key)
            if spare is not None:
                try:
                    self._start_warm(spare)
                    return
                except OSError as exc:  # it died meanwhile, or its folders cannot be mounted
                    log.warning("%s: a spare could not be used (%s); starting cold", self.name, exc)
                    self._close_channel()
        self.channel, self._their_end = channel_pair()
        if self._on_channel is not None:
            self._on_channel(self.channel)
        try:
            await super()._spawn()
        finally:
            os.close(self._their_end)  # the worker has its copy (or failed to start)

    def _start_warm(self, spare: Spare) -> None:
        """Become ``spare`` (runtime.warm): MLflow is imported already."""
        assert self._warm is not None
        view = self._prepare()
        self.channel = spare.channel
        if self._on_channel is not None:
            self._on_channel(self.channel)
        self._spawned = self._warm.assign(
            spare, view.writable, self.arguments(), self.environment(), self.log_path
        )

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    async def stop(self) -> None:
        await super().stop()
        self._close_channel()

    def inherited_fds(self) -> tuple[int, ...]:
        assert self._their_end is not None
        return (self._their_end, self._generation.fd)

    def arguments(self) -> list[str]:
        """What the worker is told besides its descriptors (a spare has its own)."""
        return [
            "--socket",
            str(self.socket_path),
            "--server-dir",
            str(self.spec.log_dir.parent),
            "--artifacts-destination",
            self.spec.artifacts_destination,
            "--boot-id",
            uuid.uuid4().hex,
            *(["--run-jobs"] if self.runs_jobs else []),
        ]

    def command(self) -> list[str]:
        assert self._their_end is not None
        return [
            self.spec.python,
            "-m",
            WORKER_MODULE,
            *self.arguments(),
            "--handoff-fd",
            str(self._their_end),
            "--generation-fd",
            str(self._generation.fd),
        ]

    def environment(self) -> dict[str, str]:
        return {**self.spec.env, BACKEND_STORE_ENV: self.spec.backend_store_uri}

    def view(self) -> View:
        return self.spec.view


class ServerProcesses:
    """The worker processes of one tracking server."""

    def __init__(
        self,
        sandbox: Sandbox,
        server_id: str,
        spec: ServerSpec,
        generation: Generation,
        on_channel: OnChannel,
        warm: WarmPool | None = None,
    ) -> None:
        self.spec = spec
        self.workers = [
            Worker(sandbox, server_id, i, spec, generation, on_channel, warm)
            for i in range(spec.workers)
        ]

        self._others: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        return any(w.healthy for w in self.workers)

    async def start(self, http: aiohttp.ClientSession, slots: StartSlots) -> None:
        """Returns once the first worker serves; the others start after it, in the background,
        and are retried until they serve (the server serves meanwhile, with fewer)."""
        first, *others = self.workers
        try:
            await first.start(http, slots, FIRST)
        except BaseException:
            await self.stop()
            raise
        if others:
            self._others = asyncio.create_task(
                _keep_starting(others, http, slots), name=f"workers of {first.folder}"
            )

    async def stop(self) -> None:
        if self._others is not None:
            self._others.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._others
        await asyncio.gather(*(w.stop() for w in self.workers))


async def _keep_starting(
    workers: list[Worker], http: aiohttp.ClientSession, slots: StartSlots
) -> None:
    async def keep_starting(worker: Worker) -> None:
        backoff = 1.0
        while True:
            try:
                await worker.start(http, slots, MORE)
                return
            except StartError as exc:
                log.warning("starting %s %s failed: %s", worker.what, worker.name, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    await asyncio.gather(*(keep_starting(w) for w in workers))


class LocalRuntime:
    """Starts, stops and watches the MLflow processes of every tracking server."""

    def __init__(self, sandbox: Sandbox, own_mounts: bool = False) -> None:
        self.sandbox = sandbox
        self._servers: dict[str, ServerProcesses] = {}
        self._slots = StartSlots(max(2, os.cpu_count() or 2))
        self._http: aiohttp.ClientSession | None = None
        # Bumped (by the daemon) when what a handed-over connection may do could change.
        self.generation = Generation()
        # Spare workers with MLflow imported (runtime.warm), where the daemon may mount
        # (``own_mounts``: it has a mount namespace of its own).
        self.warm = WarmPool(sandbox, self.generation, self._slots, own_mounts)
        # Told of each worker's new channel (the gateway's handover listens to all of them).
        self.on_channel: OnChannel = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = socket_session(self.sandbox.run_dir)
        return self._http

    def get(self, server_id: str) -> ServerProcesses | None:
        return self._servers.get(server_id)

    def server_ids(self) -> list[str]:
        """The servers whose processes run (or are being started)."""
        return list(self._servers)

    def is_serving(self, server_id: str) -> bool:
        procs = self._servers.get(server_id)
        return procs is not None and procs.serving

    async def start(self, server_id: str, spec: ServerSpec) -> None:
        current = self._servers.get(server_id)
        if current is not None:
            if current.spec == spec and current.serving:
                return
            await self.stop(server_id)
        procs = ServerProcesses(
            self.sandbox, server_id, spec, self.generation, self.on_channel, self.warm
        )
        self._servers[server_id] = procs
        try:
            await procs.start(self._session(), self._slots)
        except BaseException:
            self._servers.pop(server_id, None)
            raise

    async def read_back(self, server_id: str) -> str:
        """What a health probe after an MLflow upgrade reads from the server's first worker:
        an experiment, a run and a model version, each where one exists (MLflow's REST API,
        as its clients call it). Raises StartError with MLflow's answer when a read fails."""
        procs = self._servers.get(server_id)
        if procs is None or not procs.serving:
            raise StartError("the server does not serve")
        worker = procs.workers[0]

        async def read(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
            method = "GET" if body is None else "POST"  # MLflow searches runs by POST only
            async with self._session().request(method, worker.url(path), json=body) as answer:
                if answer.status != 200:
                    text = (await answer.text())[:300]
                    raise StartError(f"{method} {path}: {answer.status} {text}")
                found: dict[str, Any] = await answer.json()
                return found

        api = "/api/2.0/mlflow"
        read_items = []
        experiments = (await read(f"{api}/experiments/search?max_results=100"))["experiments"]
        read_items.append(f"experiment {experiments[0]['experiment_id']}")
        ids = [e["experiment_id"] for e in experiments]
        runs = await read(f"{api}/runs/search", {"experiment_ids": ids, "max_results": 1})
        for run in runs.get("runs", []):
            await read(f"{api}/runs/get?run_id={run['info']['run_id']}")
            read_items.append(f"run {run['info']['run_id']}")
        versions = await read(f"{api}/model-versions/search?max_results=1")
        for version in versions.get("model_versions", [])[:1]:
            name, number = quote(version["name"], safe=""), version["version"]
            await read(f"{api}/model-versions/get?name={name}&version={number}")
            read_items.append(f"model version {version['name']}/{number}")
        return ", ".join(read_items)

    async def stop(self, server_id: str) -> None:
        procs = self._servers.pop(server_id, None)
        if procs is not None:
            await procs.stop()

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(sid) for sid in list(self._servers)))
        await self.warm.close()
        if self._http is not None:
            await self._http.close()
