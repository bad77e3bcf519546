"""Endpoint instances as supervised MLflow scoring processes, and the loop that runs them.

Each instance of a variant is one ``mlfleet.runtime.scoring_worker`` process on a loopback
port, supervised like a tracking-server worker (restarted with backoff when it dies). The
deployer brings an endpoint's processes in line with its row after each CreateEndpoint and
DeleteEndpoint and, at daemon start, for every endpoint, so InService endpoints come back.
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
from typing import Any

import aiohttp
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.deploy.service import DELETING
from mlfleet.runtime.local import StartError, SupervisedProcess
from mlfleet.state.models import Endpoint

log = logging.getLogger(__name__)

# How long an endpoint waits for its tracking server to serve before it fails.
TRACKING_WAIT_SECONDS = 120.0


class ScoringWorker(SupervisedProcess):
    """One instance: MLflow's pyfunc scoring server for one model (``/ping`` answers 200 once
    the model is loaded)."""

    health_path = "/ping"
    what = "scoring instance"

    def __init__(self, index: int, folder: Path, model_uri: str, tracking_uri: str) -> None:
        super().__init__(index, folder)
        self._folder = folder
        self._model_uri = model_uri
        self._tracking_uri = tracking_uri

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlfleet.runtime.scoring_worker",
            "--port",
            str(self.port),
            "--model-uri",
            self._model_uri,
            "--model-dir",
            str(self._folder / f"model-{self.index}"),
        ]

    def environment(self) -> dict[str, str]:
        # The tracking server's own worker, on loopback: no gateway, no credentials.
        return {"MLFLOW_TRACKING_URI": self._tracking_uri}


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
        tracking_uri: Callable[[str], str | None],
        announce: Callable[[Session, str], None],
    ) -> None:
        self._sessions = sessions
        self._dir = data_dir / "endpoints"
        # The loopback URL of a serving tracking server by name, or None if it does not serve.
        self._tracking_uri = tracking_uri
        # Publishes an endpoint's new state in the transaction that records it.
        self._announce = announce
        self._running: dict[str, list[Variant]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._http: aiohttp.ClientSession | None = None

    def variants(self, name: str) -> list[Variant] | None:
        """The variants an endpoint serves now, None while it has no processes."""
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
            pending = (row.pending_config_name, list(row.pending_variants or []))
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
            try:
                self._running[name] = await self._start(name, config, variants)
            except (StartError, OSError) as exc:
                self._settle(name, "Failed", str(exc))
                return
        if status == "Updating" and pending[0] is not None:
            await self._switch(name, config, *pending)
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
        if self._http is None:
            self._http = aiohttp.ClientSession()
        started: list[Variant] = []
        try:
            for spec in variants:
                folder = self._dir / name.lower() / config.lower() / spec["VariantName"]
                downloaded = all(
                    (folder / f"model-{i}" / "MLmodel").is_file()
                    for i in range(spec["InstanceCount"])
                )
                tracking = self._tracking_uri(spec["TrackingServerName"])
                if tracking is None and not downloaded:
                    tracking = await self._wait_for_tracking(spec["TrackingServerName"])
                if tracking is None and not downloaded:
                    raise StartError(
                        f"Variant {spec['VariantName']}: tracking server "
                        f"{spec['TrackingServerName']} is not serving, so model "
                        f"{spec['ModelUri']} cannot be downloaded."
                    )
                instances = [
                    ScoringWorker(i, folder, spec["ModelUri"], tracking or "")
                    for i in range(spec["InstanceCount"])
                ]
                started.append(Variant(spec["VariantName"], spec["Weight"], instances))
                await asyncio.gather(*(w.start(self._http) for w in instances))
        except BaseException:
            await asyncio.gather(*(w.stop() for v in started for w in v.instances))
            raise
        return started

    async def _wait_for_tracking(self, server: str) -> str | None:
        # At daemon start the tracking servers come up alongside the endpoints that need them.
        deadline = time.monotonic() + TRACKING_WAIT_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            uri = self._tracking_uri(server)
            if uri is not None:
                return uri
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
            changed = session.execute(
                update(Endpoint)
                .where(Endpoint.name == name, Endpoint.status != DELETING)
                .values(**values)
            )
            if changed.rowcount:
                self._announce(session, name)
        log.info("endpoint %s: %s%s", name, status, f": {reason}" if reason else "")
