"""Recording: what an MLflow call through the gateway leaves behind, before it is answered.

* Request figures (``served``): the status and time of each forwarded request, per server.
* Data events, for a write (``Write``) to a server whose tags do not turn them off: the write as
  forwarded, made durable while MLflow works on it (``forwarding``), and its outcome as a second
  record when it failed in MLflow or was refused before being forwarded (``outcome``).
* MLflow events: a successful write of one of SageMaker's MLflow event types, published on the
  bus.
* Automatic model registration: a successful CreateModelVersion or SetRegisteredModelAlias on a
  server that asks for it, passed to RegistrySync (which retries a registration that failed);
  a failure there is logged, never the caller's. A version is registered even when its
  record could not be stored: MLflow made it.

``outcome`` returns once every record and event of the write is stored, with the answer to
send: MLflow's, or, when a record or event of a write MLflow applied could not be stored, a 507
if the storage is full or a 503 with Retry-After if the database is away for a moment (the
write is not acknowledged). A write that failed is answered with its failure even when its
outcome could not be recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from aiohttp import web

from mlfleet.audit.trail import AuditTrail, DataEvent
from mlfleet.auth.identity import Principal
from mlfleet.common.storage import (
    INSUFFICIENT_STORAGE,
    NOT_RECORDED,
    RESOURCE_EXHAUSTED,
    storage_full,
)
from mlfleet.events.bus import EventBus
from mlfleet.events.sources import MLFLOW_DETAIL_TYPES, mlflow_event
from mlfleet.gateway.data_events import data_event, json_or_none, keeps_body
from mlfleet.gateway.errors import mlflow_error, unavailable
from mlfleet.gateway.routing import Route, ServerRecord
from mlfleet.metrics import Recorder
from mlfleet.mlflow_api.actions import is_write
from mlfleet.registry.sync import RegistrySync
from mlfleet.registry.sync import Server as SyncServer
from mlfleet.state.db import (
    NOT_RECORDED_WHILE_AWAY,
    RETRY_AFTER_SECONDS,
    database_unavailable,
    driver_message,
)

log = logging.getLogger(__name__)

CREATE_MODEL_VERSION = "sagemaker-mlflow:CreateModelVersion"
SET_ALIAS = "sagemaker-mlflow:SetRegisteredModelAlias"


@dataclass(slots=True)
class Write:
    """An MLflow write on its way: what its records say, and the forwarded record's storing."""

    request: web.Request
    route: Route
    principal: Principal
    action: str
    started: float
    # Whether the server's tags let its writes be recorded as data events.
    audited: bool
    stored: asyncio.Future[None] | None = None


class Recording:
    def __init__(
        self, audit: AuditTrail, bus: EventBus, registry_sync: RegistrySync, metrics: Recorder
    ) -> None:
        self._audit = audit
        self._bus = bus
        self._registry_sync = registry_sync
        # Requests, waits and latency per server id, for the console's charts.
        self._metrics = metrics

    def served(self, server_id: str, status: int, seconds: float) -> None:
        """A request forwarded to a server (or meant to be), answered in ``seconds``."""
        self._metrics.request(server_id, status, seconds)

    def write(
        self,
        request: web.Request,
        route: Route,
        principal: Principal,
        action: str | None,
        audited: bool,
    ) -> Write | None:
        """A call needing ``action``, started now, as a write; None if it only reads."""
        if action is None or not is_write(action):
            return None
        return Write(request, route, principal, action, time.time(), audited)

    async def forwarding(self, write: Write) -> None:
        """Start storing an audited write's record as forwarded, while MLflow does the work;
        ``outcome`` waits for it."""
        event = await self._data_event(write, None)
        write.stored = asyncio.ensure_future(self._audit.record_data_event(event))

    async def outcome(
        self, write: Write, response: web.StreamResponse, server: ServerRecord | None
    ) -> web.StreamResponse:
        """Record what became of a write: the failure (audited), the MLflow event, and the
        automatic registration that a success calls for; the answer to send."""
        unstored: web.Response | None = None
        if write.audited and (write.stored is None or response.status >= 400):
            # Refused by the gateway itself, or failed in MLflow: the outcome, recorded.
            failure = await self._data_event(write, response)
            unstored = await _unstored(self._audit.record_data_event(failure))
        if write.stored is not None:
            unstored = await _unstored(write.stored) or unstored
        if response.status == 200 and write.action.split(":", 1)[1] in MLFLOW_DETAIL_TYPES:
            unstored = await _unstored(self._announce(write, response)) or unstored
        if response.status >= 400 or response.prepared:
            return response
        if response.status == 200 and server and server.automatic_model_registration:
            # MLflow made the version even when its record could not be stored: register it.
            await self._register(write, server, response)
        return unstored or response

    async def _data_event(self, write: Write, response: web.StreamResponse | None) -> DataEvent:
        """The write as a data event: as forwarded (no response yet), or its outcome."""
        request, route = write.request, write.route
        kept = keeps_body(route.upstream_path, request.content_length)
        answer = response.body if isinstance(response, web.Response) else None
        return data_event(
            principal=write.principal,
            action=write.action,
            resource=route.arn,
            started=write.started,
            source_ip=request.remote,
            user_agent=request.headers.get("User-Agent", ""),
            method=request.method,
            upstream_path=route.upstream_path,
            body=await request.read() if kept else None,
            status=response.status if response is not None else None,
            answer=answer if isinstance(answer, bytes) else None,
        )

    async def _announce(self, write: Write, response: web.StreamResponse) -> None:
        """One of SageMaker's five MLflow events; stored before the answer leaves."""
        answer = response.body if isinstance(response, web.Response) else None
        event = mlflow_event(
            write.action.split(":", 1)[1],
            write.route.arn,
            write.route.name,
            write.principal.arn,
            json_or_none(await write.request.read()),
            json_or_none(answer) if isinstance(answer, bytes) else None,
        )
        if event is not None:
            await asyncio.to_thread(self._bus.publish, [event])

    async def _register(
        self, write: Write, server: ServerRecord, response: web.StreamResponse
    ) -> None:
        """Automatic registration (mlfleet.registry.sync); a failure is logged, never the
        caller's: the MLflow call succeeded."""
        route = write.route
        sync_server = SyncServer(server.id, route.name, route.arn, server.role_arn)
        try:
            if write.action == CREATE_MODEL_VERSION:
                answer = response.body if isinstance(response, web.Response) else None
                created = json_or_none(answer) if isinstance(answer, bytes) else None
                if isinstance(created, dict) and "model_version" in created:
                    await self._registry_sync.version_created(sync_server, created["model_version"])
            elif write.action == SET_ALIAS:
                asked = json_or_none(await write.request.read())
                if isinstance(asked, dict):
                    await self._registry_sync.alias_set(sync_server, asked)
        except Exception:
            log.exception("automatic registration on %s failed", route.name)


async def _unstored(storing: Awaitable[None]) -> web.Response | None:
    """None once a record or event is stored; if it could not be, for lack of space or with the
    database away for a moment, the answer to give instead (507, or 503 with Retry-After);
    other failures raise."""
    try:
        await storing
    except Exception as error:
        if storage_full(error):
            log.warning("a write's record or event could not be stored: the storage is full")
            return mlflow_error(INSUFFICIENT_STORAGE, RESOURCE_EXHAUSTED, NOT_RECORDED)
        if database_unavailable(error):
            log.warning(
                "a write's record or event could not be stored: the database is unavailable: %s",
                driver_message(error),
            )
            return unavailable(NOT_RECORDED_WHILE_AWAY, RETRY_AFTER_SECONDS)
        raise
    return None
