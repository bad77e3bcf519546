"""Automatic registration: MLflow model versions become SageMaker model packages.

For a tracking server with ``AutomaticModelRegistration``, each model version created through
the gateway (API or UI) is registered as a package in the group
``{registered-model-name}-{first 6 hex of sha256(server name)}`` (created if absent), and the
version gets the tag ``sagemaker.model_package_arn``. Aliases
``sagemakerlifecycle-{staging|production}-{pending|active}`` set the package's ModelLifeCycle.

Exactly once: each package is created with a ClientToken derived from (server, model, version),
so a retry can only find the package it made before, never make a second; and a version whose
registration was cut short lacks the tag, so reconciliation finds and registers it. It runs
whenever the server starts serving (a daemon crash between MLflow's answer and the package) and,
after a registration that failed (the database or the worker away for a moment), again and again
with growing pauses (2 s doubling to 60 s) until it succeeds or for ``RETRY_FOR_SECONDS``; past
that, the server's next start catches up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mlfleet.auth.identity import Principal
from mlfleet.protocol.errors import AwsError
from mlfleet.protocol.shapes.sagemaker import CreateModelPackageInput
from mlfleet.registry.service import ModelRegistry
from mlfleet.state.db import database_unavailable, driver_message

log = logging.getLogger(__name__)

PACKAGE_TAG = "sagemaker.model_package_arn"
_LIFECYCLE_ALIAS = re.compile(r"sagemakerlifecycle-(staging|production)-(pending|active)")
_SEARCH_PAGE = 200
RETRY_FIRST_SECONDS = 2.0
RETRY_LONGEST_PAUSE_SECONDS = 60.0
RETRY_FOR_SECONDS = 15 * 60.0

# (server id, method, path, JSON body or None) -> MLflow's JSON answer
MlflowCall = Callable[[str, str, str, Mapping[str, Any] | None], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Server:
    """The tracking server a registration is for; its role is who registers."""

    id: str
    name: str
    arn: str
    role_arn: str


def group_name(model_name: str, server_name: str) -> str:
    suffix = hashlib.sha256(server_name.encode()).hexdigest()[:6]
    return f"{model_name}-{suffix}"


def client_token(server: Server, model_name: str, version: str) -> str:
    """36 characters of [0-9a-f], the same for the same version of the same server."""
    key = f"{server.id}\0{model_name}\0{version}".encode()
    return hashlib.sha256(key).hexdigest()[:36]


class RegistrySync:
    def __init__(self, registry: ModelRegistry, call_mlflow: MlflowCall, account_id: str) -> None:
        self._registry = registry
        self._call = call_mlflow
        self._account = account_id
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._retrying: dict[str, asyncio.Task[None]] = {}

    def _principal(self, server: Server) -> Principal:
        # The server registers as its role, as SageMaker's tracking servers do.
        role = server.role_arn.rsplit("/", 1)[-1]
        return Principal(
            f"arn:aws:sts::{self._account}:assumed-role/{role}/{server.name}",
            f"mlfleet:{server.id}",
            role,
            kind="role",
            identity_arn=server.role_arn,
        )

    async def version_created(self, server: Server, version: Mapping[str, Any]) -> None:
        """Register one model version (MLflow's CreateModelVersion answer's ``model_version``);
        a failure is logged and retried later (the module's contract), never raised."""
        try:
            async with self._locks.setdefault(server.id, asyncio.Lock()):
                await self._register(server, version)
        except Exception as exc:
            log.warning(
                "tracking server %s: model %s version %s is not registered yet: %s",
                server.name,
                version.get("name"),
                version.get("version"),
                _reason(exc),
            )
            self._retry_later(server)

    async def _register(self, server: Server, version: Mapping[str, Any]) -> None:
        name, number = str(version["name"]), str(version["version"])
        arn = await asyncio.to_thread(self._package_for, server, version)
        await self._call(
            server.id,
            "POST",
            "/api/2.0/mlflow/model-versions/set-tag",
            {"name": name, "version": number, "key": PACKAGE_TAG, "value": arn},
        )

    def _package_for(self, server: Server, version: Mapping[str, Any]) -> str:
        principal = self._principal(server)
        name, number = str(version["name"]), str(version["version"])
        group = group_name(name, server.name)
        try:
            self._registry.create_group(
                {
                    "ModelPackageGroupName": group,
                    "ModelPackageGroupDescription": (
                        f"MLflow registered model {name} of tracking server {server.name}"
                    ),
                },
                principal,
            )
        except AwsError as exc:
            if "already exists" not in exc.message:
                raise
        request: CreateModelPackageInput = {
            "ModelPackageGroupName": group,
            "ModelPackageDescription": f"MLflow model {name} version {number}",
            "SourceUri": f"models:/{name}/{number}",
            "ModelPackageRegistrationType": "Registered",
            "CustomerMetadataProperties": {
                "mlflow.tracking_server_arn": server.arn,
                "mlflow.registered_model_name": name,
                "mlflow.model_version": number,
                "mlflow.source": str(version.get("source", ""))[:256],
            },
            "ClientToken": client_token(server, name, number),
        }
        return str(self._registry.create_package(request, principal)["ModelPackageArn"])

    async def alias_set(self, server: Server, request: Mapping[str, Any]) -> None:
        """A lifecycle alias on a registered version sets its package's ModelLifeCycle."""
        found = _LIFECYCLE_ALIAS.fullmatch(str(request.get("alias", "")))
        if found is None:
            return
        name, number = str(request["name"]), str(request["version"])
        answer = await self._call(
            server.id,
            "GET",
            f"/api/2.0/mlflow/model-versions/get?name={quote(name, safe='')}&version={number}",
            None,
        )
        tags = {t["key"]: t["value"] for t in answer.get("model_version", {}).get("tags", [])}
        arn = tags.get(PACKAGE_TAG)
        if arn is None:
            return
        stage, status = found.groups()
        await asyncio.to_thread(
            self._registry.update_package,
            {
                "ModelPackageArn": arn,
                "ModelLifeCycle": {
                    "Stage": stage,
                    "StageStatus": status,
                    "StageDescription": f"MLflow alias {request['alias']}",
                },
            },
            self._principal(server),
        )

    def catch_up(self, row: Any) -> None:
        """A tracking server (a TrackingServer row) serves again: register what it missed."""
        if not row.automatic_model_registration:
            return
        self._start(self._catching_up(Server(row.id, row.name, row.arn, row.role_arn)))

    def _retry_later(self, server: Server) -> None:
        if server.id not in self._retrying:
            self._retrying[server.id] = self._start(self._retrying_until_registered(server))

    def _start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)
        return task

    async def _catching_up(self, server: Server) -> None:
        try:
            await self._reconcile_logged(server)
        except Exception as exc:
            log.warning(
                "tracking server %s: catching up on registration failed: %s",
                server.name,
                _reason(exc),
            )
            self._retry_later(server)

    async def _retrying_until_registered(self, server: Server) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + RETRY_FOR_SECONDS
        pause = RETRY_FIRST_SECONDS
        try:
            while True:
                await asyncio.sleep(pause)
                try:
                    await self._reconcile_logged(server)
                    return
                except Exception as exc:
                    pause = min(pause * 2, RETRY_LONGEST_PAUSE_SECONDS)
                    if loop.time() + pause > give_up_at:
                        log.warning(
                            "tracking server %s: registration still failing (%s); the versions "
                            "missed are registered when the server next starts",
                            server.name,
                            _reason(exc),
                        )
                        return
                    log.warning(
                        "tracking server %s: registration failed again (%s); retrying in %.0f s",
                        server.name,
                        _reason(exc),
                        pause,
                    )
        finally:
            del self._retrying[server.id]

    async def _reconcile_logged(self, server: Server) -> None:
        registered = await self._reconcile(server)
        if registered:
            log.info("tracking server %s: registered %d missed versions", server.name, registered)

    async def _reconcile(self, server: Server) -> int:
        """Register every version that lacks its package tag; return how many were. The first
        failure raises."""
        missing = [v async for v in self._versions(server) if not _is_registered(v)]
        for version in missing:
            async with self._locks.setdefault(server.id, asyncio.Lock()):
                await self._register(server, version)
        return len(missing)

    async def _versions(self, server: Server) -> AsyncIterator[Mapping[str, Any]]:
        token: str | None = None
        while True:
            query = f"max_results={_SEARCH_PAGE}" + (f"&page_token={token}" if token else "")
            page = await self._call(
                server.id, "GET", f"/api/2.0/mlflow/model-versions/search?{query}", None
            )
            for version in page.get("model_versions", []):
                yield version
            token = page.get("next_page_token")
            if not token:
                return


def _reason(error: Exception) -> str:
    """One line on why a registration failed, without SQL or parameters."""
    if isinstance(error, AwsError):
        return error.message
    if database_unavailable(error):
        return f"the database is unavailable: {driver_message(error)}"
    return f"{type(error).__name__}: {driver_message(error)}"


def _is_registered(version: Mapping[str, Any]) -> bool:
    return any(tag.get("key") == PACKAGE_TAG for tag in version.get("tags", []))
