"""The gateway: MLflow's data path, composed of its parts.

Every request for a tracking server is authenticated (``authentication``) and routed
(``routing``), then the action its route needs is authorized against the caller's policies,
its input checked (``mlflow_api.hardening``), a worker admitted to (``admission``), the request
forwarded (``forwarding``) and what it did recorded (``recording``); last, its connection may
be handed over to the worker (``handover``). Whether a server exists is told only to a caller
authenticated and allowed the action. Every refusal has MLflow's error shape (``mlflow_error``);
a call that meets the daemon's database away for a moment (``state.db.database_unavailable``)
is answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from mlfleet.api.operations import Check, Target
from mlfleet.api.pipeline import Pipeline
from mlfleet.audit.trail import MLFLOW_APP_TYPE, TRACKING_SERVER_TYPE
from mlfleet.auth.credentials import AuthenticationError
from mlfleet.auth.identity import Principal
from mlfleet.fleet.lifecycle import APP
from mlfleet.gateway.admission import Admission, capped
from mlfleet.gateway.authentication import Authentication, unauthenticated
from mlfleet.gateway.data_events import data_events_on
from mlfleet.gateway.errors import mlflow_error, unavailable
from mlfleet.gateway.forwarding import Forwarding, MlflowRefused, WorkerUnreachable
from mlfleet.gateway.handover import Handover
from mlfleet.gateway.own_calls import OwnCalls
from mlfleet.gateway.presigned_uploads import is_upload_request, presigned_upload
from mlfleet.gateway.recording import Recording, Write
from mlfleet.gateway.routing import Route, Routing, ServerRecord
from mlfleet.mlflow_api.actions import required_action
from mlfleet.mlflow_api.hardening import ARN_HEADER, screen
from mlfleet.mlflow_api.s3_view import bucket_of, from_s3_view, to_s3_view
from mlfleet.policy.authorizer import RequestFacts, denial_message
from mlfleet.protocol.errors import AwsError
from mlfleet.settings import Settings
from mlfleet.state import db

# What others import from the gateway: the composition, the record its lookup returns, the
# error shape and the ARN header (defined in routing, errors and mlflow_api.hardening).
__all__ = ["ARN_HEADER", "Gateway", "ServerRecord", "mlflow_error"]
log = logging.getLogger(__name__)
# Until the supervisor has seen a dead worker go, its socket refuses; the next try picks again.
UNREACHABLE_RETRY_SECONDS = 0.05


class Gateway:
    def __init__(
        self,
        *,
        settings: Settings,
        routing: Routing,
        authentication: Authentication,
        pipeline: Pipeline,
        admission: Admission,
        forwarding: Forwarding,
        recording: Recording,
        handover: Handover,
    ) -> None:
        self._settings = settings
        self._routing = routing
        self._authentication = authentication
        self._pipeline = pipeline
        self._admission = admission
        self._forwarding = forwarding
        self._recording = recording
        self._handover = handover
        self._own_calls = OwnCalls(admission, forwarding)

    async def start(self) -> None:
        await self._forwarding.start()

    async def close(self) -> None:
        await self._forwarding.close()

    # handlers ------------------------------------------------------------------------------

    async def by_path(self, request: web.Request) -> web.StreamResponse:
        """``/mlflow/<name>/...``: a TrackingServerUrl, or the UI's sign-in link."""
        try:
            route = self._routing.by_path(request)
            if route.upstream_path.split("?", 1)[0] == "/auth":
                server = self._routing.lookup(route.name)
                return await self._authentication.open_ui_session(request, route.name, server)
            return await self._serve(request, route)
        except Exception as exc:
            return _database_away(exc)

    async def by_arn_header(self, request: web.Request) -> web.StreamResponse:
        """MLflow's own paths, for the server named by the ARN header."""
        try:
            route = self._routing.by_arn_header(request)
            if not isinstance(route, Route):
                return route
            return await self._serve(request, route)
        except Exception as exc:
            return _database_away(exc)

    # the steps -----------------------------------------------------------------------------

    async def _serve(self, request: web.Request, route: Route) -> web.StreamResponse:
        # Authenticate before saying whether a server exists: names are not for strangers.
        server = self._routing.server(route.name)
        if server is not None and server.arn != route.arn:
            if route.prefix:  # an App's URL (its id is its name): it is authorized as an App
                route = replace(route, arn=server.arn)
            else:  # the ARN of the other kind, with this name: none of this kind is called so
                server = None
        try:
            principal, body, payload_hash = await self._authentication.authenticate(
                request, server.id if server else "", route.signing_service
            )
        except (AuthenticationError, AwsError) as exc:
            return unauthenticated(exc)
        requirement = required_action(request.method, route.upstream_path)
        if requirement.denied:
            return mlflow_error(*requirement.refusal, requirement.reason)
        action = requirement.action
        audited = data_events_on(server.tags if server else None)
        write = self._recording.write(request, route, principal, action, audited)
        response = await self._answer(
            request, route, server, principal, body, payload_hash, action, write
        )
        if write is not None:
            response = await self._recording.outcome(write, response, server)
        view = _s3_view_of(route)
        if view is not None and isinstance(response, web.Response) and _is_json(response):
            assert isinstance(response.body, bytes)
            response.body = to_s3_view(response.body, view)
        if server is not None:
            try:
                await self._handover.offer(
                    request,
                    response,
                    server.id,
                    route.arn,
                    route.prefix,
                    principal,
                    facts_of(request, server),
                    audited,
                )
            except Exception as exc:
                # MLflow has answered: only the hand-over, which may need the caller's policies
                # read again, is given up (the 503 would have a client repeat a done write).
                if not db.database_unavailable(exc):
                    raise
                log.warning("a connection stays with the gateway: %s", db.driver_message(exc))
        return response

    async def _answer(
        self,
        request: web.Request,
        route: Route,
        server: ServerRecord | None,
        principal: Principal,
        body: bytes | None,
        payload_hash: str | None,
        action: str | None,
        write: Write | None,
    ) -> web.StreamResponse:
        """Authorize, check the input, admit and forward: MLflow's answer, or a refusal."""
        if action is not None:
            # Decided before the server's existence is revealed, on the ARN the name gives.
            target = Target(route.arn, server.tags if server else ())
            kind = MLFLOW_APP_TYPE if server and server.kind == APP else TRACKING_SERVER_TYPE
            check = Check(action, target, kind)
            result = self._pipeline.decide(principal, check, facts_of(request, server))
            if not result.allowed:
                message = denial_message(principal, action, route.arn, result)
                return mlflow_error(403, "PERMISSION_DENIED", message)
        if server is None:
            return mlflow_error(
                404, "RESOURCE_DOES_NOT_EXIST", f"Tracking server {route.name} does not exist."
            )
        view = _s3_view_of(route)
        if view is not None:
            length = request.content_length
            if (
                body is None
                and payload_hash is None
                and request.body_exists
                and length is not None
                and length <= self._settings.max_api_body_bytes
            ):
                body = await request.read()
            if body is not None:  # MLflow's records hold MLflow's own locations
                body = from_s3_view(body, view)
        # Only for callers allowed the action: traversal in artifact paths, foreign sources and
        # locations, oversized bodies (hardening), checked before anything reaches MLflow.
        refusal, body = await screen(
            request,
            route.upstream_path,
            body,
            payload_hash,
            self._settings.max_api_body_bytes,
            server.artifact_store_uri,
        )
        if refusal is not None:
            return mlflow_error(refusal.status, refusal.code, refusal.message)
        if view is not None and is_upload_request(request.method, route.upstream_path):
            return await presigned_upload(
                body or b"",
                route.name,
                self._authentication.caller_key(request),
                lambda path: self._mlflow_get(server.id, path),
                self._settings.endpoint_url,
                self._settings.region,
            )
        server_id = server.id
        # A worker that dies is replaced: its requests wait for another worker or for the
        # replacement, a bounded time, rather than fail.
        deadline = time.monotonic() + self._settings.gateway_start_wait_seconds
        announced = False
        while True:
            if not self._admission.serving(server_id):
                waited = await self._admission.until_serving(route.name, server)
                if not isinstance(waited, str):
                    return waited
                server_id = waited
            if write is not None and write.audited and not announced:
                await self._recording.forwarding(write)
                announced = True
            forwarded = time.perf_counter()
            worker = await self._admission.acquire(server_id, capped(route.upstream_path))
            if worker is None:  # it stopped serving since: its worker is being replaced
                if time.monotonic() < deadline:
                    continue
                response: web.StreamResponse = unavailable(
                    f"Tracking server {route.name} stopped serving."
                )
                break
            try:
                response = await self._forwarding.forward(
                    request, worker, route, body, payload_hash, _s3_view_of(route)
                )
            except WorkerUnreachable:  # nothing was sent: try again, on a worker that serves
                if time.monotonic() < deadline:
                    await asyncio.sleep(UNREACHABLE_RETRY_SECONDS)
                    continue
                response = unavailable(f"Tracking server {route.name} did not answer.")
            finally:
                self._admission.release(server_id, worker)
            break
        self._recording.served(server_id, response.status, time.perf_counter() - forwarded)
        return response

    async def _mlflow_get(self, server_id: str, path: str) -> dict[str, Any]:
        """MLflow's answer to a GET of mlfleet's own; LookupError when it answers 404."""
        try:
            return await self._own_calls(server_id, "GET", path, None)
        except MlflowRefused as refused:
            if refused.status == 404:
                raise LookupError(path) from refused
            raise


def _database_away(exc: Exception) -> web.StreamResponse:
    """A call that met the daemon's database away for a moment (looking up a server or a
    caller's policies, recording a write or its event) is answered 503 with Retry-After, which
    MLflow clients retry; any other failure is raised on."""
    if not db.database_unavailable(exc):
        raise exc
    log.warning("an MLflow call met the database unavailable: %s", db.driver_message(exc))
    return unavailable(
        "The tracking server is unavailable for a moment; retry.", db.RETRY_AFTER_SECONDS
    )


def _s3_view_of(route: Route) -> str | None:
    """The bucket of a caller through the ARN header, who sees artifact locations as S3's
    (mlflow_api.s3_view); None for a TrackingServerUrl caller, who sees MLflow's."""
    return None if route.prefix else bucket_of(route.name)


def _is_json(response: web.Response) -> bool:
    return (
        isinstance(response.body, bytes)
        and "json" in (response.content_type or "")
        and ("Content-Encoding" not in response.headers)
    )


def facts_of(request: web.Request, server: ServerRecord | None) -> RequestFacts:
    """What authorization knows of a request besides its caller and action."""
    return RequestFacts(
        source_ip=request.remote,
        secure_transport=request.secure,
        resource_tags=server.tags if server else (),
    )
