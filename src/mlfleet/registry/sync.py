"""Automatic registration: MLflow model versions become SageMaker model packages.

For a tracking server with ``AutomaticModelRegistration``, each model version created through
the gateway (API or UI) is registered as a package in the group
``{registered-model-name}-{first 6 hex of sha256(server name)}`` (created if absent), and the
version gets the tag ``sagemaker.model_package_arn``. Aliases
``sagemakerlifecycle-{staging|production}-{pending|active}`` set the package's ModelLifeCycle.

Exactly once: each package is created with a ClientToken derived from (server, model, version),
so a retry can only find the package it made before, never make a second; and a version whose
registration was cut short (a crash between MLflow's answer and the package, say) lacks the tag,
so ``reconcile``, run whenever the server starts serving, finds and registers it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mlfleet.auth.identity import Principal
from mlfleet.protocol.errors import AwsError
from mlfleet.protocol.shapes.sagemaker import CreateModelPackageInput
from mlfleet.registry.service import ModelRegistry

log = logging.getLogger(__name__)

PACKAGE_TAG = "sagemaker.model_package_arn"
_LIFECYCLE_ALIAS = re.compile(r"sagemakerlifecycle-(staging|production)-(pending|active)")
_SEARCH_PAGE = 200

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
        """Register one model version (MLflow's CreateModelVersion answer's ``model_version``)."""
        async with self._locks.setdefault(server.id, asyncio.Lock()):
            await self._register(server, version)

    async def _register(self, server: Server, version: Mapping[str, Any]) -> None:
        name, number = str(version["name"]), str(version["version"])
        try:
            arn = await asyncio.to_thread(self._package_for, server, version)
        except AwsError as exc:
            log.warning(
                "tracking server %s: model %s version %s was not registered: %s",
                server.name,
                name,
                number,
                exc.message,
            )
            return
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
        server = Server(row.id, row.name, row.arn, row.role_arn)
        task = asyncio.get_running_loop().create_task(self._catch_up(server))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _catch_up(self, server: Server) -> None:
        try:
            registered = await self.reconcile(server)
        except Exception:
            log.exception("tracking server %s: catching up on registration failed", server.name)
            return
        if registered:
            log.info("tracking server %s: registered %d missed versions", server.name, registered)

    async def reconcile(self, server: Server) -> int:
        """Register every version that lacks its package tag; return how many were."""
        missing = [v async for v in self._versions(server) if not _is_registered(v)]
        for version in missing:
            await self.version_created(server, version)
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


def _is_registered(version: Mapping[str, Any]) -> bool:
    return any(tag.get("key") == PACKAGE_TAG for tag in version.get("tags", []))
