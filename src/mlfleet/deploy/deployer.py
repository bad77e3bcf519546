"""Endpoint instances as supervised MLflow scoring processes, and the loop that runs them.

Each instance of a variant is one ``mlfleet.runtime.scoring_worker`` process on a Unix
socket, confined (runtime.sandbox), supervised like a tracking-server worker (restarted with
backoff when it dies). The deployer brings an endpoint's processes in line with its row after
each CreateEndpoint and DeleteEndpoint and, at daemon start, for every endpoint, so InService
endpoints come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.deploy.service import DELETING
from mlfleet.runtime.local import FIRST, StartError, StartSlots, SupervisedProcess
from mlfleet.runtime.sandbox import Sandbox, View
from mlfleet.runtime.sockets import folder_of, socket_session
from mlfleet.state.models import Endpoint

log = logging.getLogger(__name__)

# How long an endpoint waits for its tracking server to serve before it fails.
TRACKING_WAIT_SECONDS = 120.0


class ScoringWorker(SupervisedProcess):
    """One instance: MLflow's pyfunc scoring server for one model (``/ping`` answers 200 once
    the model is loaded).

    Before its first start the model is fetched (runtime.model_fetch) from a worker of its
    tracking server; the instance itself then sees only its model, with no network.
    """

    health_path = "/ping"
    what = "scoring instance"

    def __init__(
        self,
        sandbox: Sandbox,
        index: int,
        folder: Path,
        model_uri: str,
        tracking_socket: Path | None,
    ) -> None:
        super().__init__(sandbox, folder_of("e", f"{folder}/{index}"), "i", folder)
        self.index = index
        self.model_dir = folder / f"model-{index}"
        self._folder = folder
        self._model_uri = model_uri
        self._tracking_socket = tracking_socket

    async def start(
        self, http: aiohttp.ClientSession, slots: StartSlots | None = None, priority: int = FIRST
    ) -> None:
        if not (self.model_dir / "MLmodel").is_file():
            await self._fetch()
        await super().start(http, slots, priority)

    async def _fetch(self) -> None:
        if self._tracking_socket is None:
            raise StartError(f"model {self._model_uri} is not downloaded and cannot be")
        self._folder.mkdir(parents=True, exist_ok=True)
        view = View(writable=(self._folder,), readable=(self._tracking_socket.parent,))
        self._sandbox.give(self._folder)
        argv = [
            sys.executable,
            "-m",
            "mlfleet.runtime.model_fetch",
            "--tracking-socket",
            str(self._tracking_socket),
            "--model-uri",
            self._model_uri,
            "--model-dir",
            str(self.model_dir),
        ]
        log_path = self._folder / f"fetch-{self.index}.log"
        with log_path.open("ab") as logfile:
            fetch = await self._sandbox.spawn(argv, view, {}, logfile.fileno())
        if await fetch.process.wait() != 0:
            said = log_path.read_bytes()[-1500:].decode(errors="replace").strip()
            raise StartError(f"downloading model {self._model_uri} failed: {said}")

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlfleet.runtime.scoring_worker",
            "--socket",
            str(self.socket_path),
            "--model-dir",
            str(self.model_dir),
        ]

    def environment(self) -> dict[str, str]:
        return {}

    def view(self) -> View:
        return View(readable=(self.model_dir,))


@dataclass
class Variant:
    name: str
    weight: float
    instances: list[ScoringWorker]


class Deployer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        data_dir: Path,
        sandbox: Sandbox,
        tracking_socket: Callable[[str], Path | None],
        announce: Callable[[Session, str], None],
    ) -> None:
        self._sessions = sessions
        self._dir = data_dir / "endpoints"
        self._sandbox = sandbox
        # The socket of a serving tracking server's worker by name, or None if it does not serve.
        self._tracking_socket = tracking_socket
        # Publishes an endpoint's new state in the transaction that records it.
        self._announce = announce
        self._running: dict[str, list[Variant]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._http: aiohttp.ClientSession | None = None

    @property
    def client(self) -> aiohttp.ClientSession:
        """A pooled client for the instances' sockets (``ScoringWorker.url``)."""
        if self._http is None:
            self._http = socket_session(self._sandbox.run_dir)
        return self._http

    def variants(self, name: str) -> list[Variant] | None:
        """The variants an endpoint serves now: none yet while the instances of an endpoint
        that was in service start again (after a daemon restart); None when it has no
        processes."""
        return self._running.get(name)

    def kick(self, name: str) -> None:
        """Ask for endpoint ``name`` to be reconciled (coalesced with a pass already running)."""
        if name in self._tasks:
            self._again.add(name)
            return
        self._tasks[name] = asyncio.get_running_loop().create_task(self._run(name))

    def resume_all(self) -> None:
        with self._sessions() as session:
            names = list(session.scalars(select(Endpoint.name)))
        for name in names:
            self.kick(name)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for name in list(self._running):
            await self._stop(name)
        if self._http is not None:
            await self._http.close()

    async def _run(self, name: str) -> None:
        try:
            while True:
                self._again.discard(name)
                try:
                    await self._reconcile(name)
                except Exception:
                    log.exception("reconciling endpoint %s failed", name)
                if name not in self._again:
                    return
        finally:
            self._tasks.pop(name, None)

    async def _reconcile(self, name: str) -> None:
        with self._sessions() as session:
            row = session.scalar(select(Endpoint).where(Endpoint.name == name))
            if row is None:
                await self._stop(name)
                return
            status, config, variants = row.status, row.config_name, list(row.variants)
            pending_config = row.pending_config_name
            pending_variants = list(row.pending_variants or [])
        if status == DELETING:
            await self._stop(name)
            shutil.rmtree(self._dir / name.lower(), ignore_errors=True)
            with self._sessions.begin() as session:
                session.execute(
                    delete(Endpoint).where(Endpoint.name == name, Endpoint.status == DELETING)
                )
            log.info("endpoint %s deleted", name)
            return
        if status == "Failed":
            return
        if name not in self._running:
            # Created, or running before the daemon restarted (an update included).
            if status in ("InService", "Updating"):
                # Serving before the restart: invocations wait for its instances (a bounded
                # time, then 503) instead of being told it is not in service.
                self._running[name] = []
            try:
                self._running[name] = await self._start(name, config, variants)
            except (StartError, OSError) as exc:
                self._running.pop(name, None)
                self._settle(name, "Failed", str(exc))
                return
        if status == "Updating" and pending_config is not None:
            await self._switch(name, config, pending_config, pending_variants)
        elif status != "InService":
            self._settle(name, "InService", None)

    async def _switch(
        self, name: str, old_config: str, config: str, variants: list[dict[str, Any]]
    ) -> None:
        """Start the new config's instances beside the serving ones; once all of them serve,
        route traffic to them and stop the old ones. A failed start leaves the old ones
        serving, and says why."""
        try:
            started = await self._start(name, config, variants)
        except (StartError, OSError) as exc:
            self._settle(
                name, "InService", f"Update to endpoint config {config} failed: {exc}", done=True
            )
            return
        old = self._running.get(name, [])
        self._running[name] = started
        self._settle(name, "InService", None, done=True)
        await asyncio.gather(*(w.stop() for v in old for w in v.instances))
        shutil.rmtree(self._dir / name.lower() / old_config.lower(), ignore_errors=True)

    async def _start(self, name: str, config: str, variants: list[dict[str, Any]]) -> list[Variant]:
        if not (self._sandbox.confined or self._sandbox.allow_unconfined):
            raise StartError(
                "model code is not deployed: processes cannot be confined here "
                f"({self._sandbox.reason}), so a model would run with the daemon's rights. "
                "Start mlfleet with --allow-unconfined-model-code to accept that risk."
            )
        started: list[Variant] = []
        try:
            for spec in variants:
                folder = self._dir / name.lower() / config.lower() / spec["VariantName"]
                downloaded = all(
                    (folder / f"model-{i}" / "MLmodel").is_file()
                    for i in range(spec["InstanceCount"])
                )
                tracking = self._tracking_socket(spec["TrackingServerName"])
                if tracking is None and not downloaded:
                    tracking = await self._wait_for_tracking(spec["TrackingServerName"])
                if tracking is None and not downloaded:
                    raise StartError(
                        f"Variant {spec['VariantName']}: tracking server "
                        f"{spec['TrackingServerName']} is not serving, so model "
                        f"{spec['ModelUri']} cannot be downloaded."
                    )
                instances = [
                    ScoringWorker(self._sandbox, i, folder, spec["ModelUri"], tracking)
                    for i in range(spec["InstanceCount"])
                ]
                started.append(Variant(spec["VariantName"], spec["Weight"], instances))
                await asyncio.gather(*(w.start(self.client) for w in instances))
        except BaseException:
            await asyncio.gather(*(w.stop() for v in started for w in v.instances))
            raise
        return started

    async def _wait_for_tracking(self, server: str) -> Path | None:
        # At daemon start the tracking servers come up alongside the endpoints that need them.
        deadline = time.monotonic() + TRACKING_WAIT_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            found = self._tracking_socket(server)
            if found is not None:
                return found
        return None

    async def _stop(self, name: str) -> None:
        variants = self._running.pop(name, [])
        await asyncio.gather(*(w.stop() for v in variants for w in v.instances))

    def _settle(self, name: str, status: str, reason: str | None, done: bool = False) -> None:
        """Record an endpoint's status; `done`: an update has ended, so the pending config
        becomes the current one if it serves (no reason) and is dropped either way. A
        DeleteEndpoint that came meanwhile keeps its Deleting."""
        values: dict[str, Any] = {"status": status, "failure_reason": reason}
        if done:
            if reason is None:
                values["config_name"] = Endpoint.pending_config_name
                values["variants"] = Endpoint.pending_variants
            values["pending_config_name"] = values["pending_variants"] = None
        with self._sessions.begin() as session:
            # An UPDATE's result is a CursorResult, which Session.execute's typing does not say.
            changed = cast(
                CursorResult[Any],
                session.execute(
                    update(Endpoint)
                    .where(Endpoint.name == name, Endpoint.status != DELETING)
                    .values(**values)
                ),
            )
            if changed.rowcount:
                self._announce(session, name)
        log.info("endpoint %s: %s%s", name, status, f": {reason}" if reason else "")
