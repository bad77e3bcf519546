"""The data path: authenticate, pick an MLflow worker, and stream the request through.

Built on aiohttp's server and pooled client (measured ~3-4x cheaper per hop than an httpx
stack, spec/baseline-perf.md). Bodies are streamed both ways, so a 1 GB artifact is never held
in memory. Each worker process gets at most ``max_inflight_per_worker`` API requests at a time
(the rest wait here, in order): MLflow's write handlers exhaust their SQLAlchemy pool when one
process takes many more (behaviour 3), and a GIL-bound worker gains nothing from more than a few,
only tail latency (measured in bench/). Artifact transfers, which wait on I/O rather than the
database, are not held back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from mlfleet.audit.trail import AuditTrail, DataEvent
from mlfleet.auth.credentials import AuthenticationError, Credentials
from mlfleet.auth.identity import Principal
from mlfleet.auth.ui_sessions import COOKIE_NAME, UiSessions
from mlfleet.events.bus import EventBus
from mlfleet.events.sources import MLFLOW_DETAIL_TYPES, mlflow_event
from mlfleet.gateway.data_events import (
    data_event,
    data_events_on,
    json_or_none,
    keeps_body,
)
from mlfleet.gateway.handover import Handover
from mlfleet.metrics import Recorder
from mlfleet.mlflow_api.actions import is_write, required_action
from mlfleet.mlflow_api.hardening import ARN_HEADER, STRIPPED_REQUEST, STRIPPED_RESPONSE, screen
from mlfleet.policy.authorizer import Authorizer, RequestFacts, denial_message
from mlfleet.protocol.errors import AwsError
from mlfleet.registry.sync import RegistrySync
from mlfleet.registry.sync import Server as SyncServer
from mlfleet.runtime.local import LocalRuntime, Worker
from mlfleet.runtime.sockets import socket_session
from mlfleet.settings import Settings

log = logging.getLogger(__name__)

# Bodies up to this size are read whole (and hashed for SigV4); larger ones are streamed.
BUFFER_LIMIT = 8 * 1024 * 1024
SMALL_RESPONSE = 1024 * 1024
CHUNK = 256 * 1024
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
CREATE_MODEL_VERSION = "sagemaker-mlflow:CreateModelVersion"
SET_ALIAS = "sagemaker-mlflow:SetRegisteredModelAlias"


@dataclass(frozen=True)
class Route:
    """Where a data-plane request goes: which server, and the path MLflow should see."""

    name: str
    upstream_path: str
    # What precedes upstream_path in the client's URL: "/mlflow/<name>", or "" (ARN header).
    prefix: str = ""


@dataclass
class ServerLoad:
    """In-flight requests per worker of one server, and the queue of those waiting for a slot."""

    inflight: dict[str, int] = field(default_factory=dict)
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)


@dataclass(frozen=True)
class ServerRecord:
    """What the gateway needs to know of a tracking server, read from the control plane."""

    id: str
    status: str
    desired_state: str
    tags: tuple[dict[str, str], ...] = ()
    role_arn: str = ""
    automatic_model_registration: bool = False


# name -> the server's record, or None for an unknown name.
ServerLookup = Callable[[str], ServerRecord | None]


def mlflow_error(status: int, code: str, message: str) -> web.Response:
    # MLflow clients read this shape and raise MlflowException(message).
    return web.json_response({"error_code": code, "message": message}, status=status)


class Gateway:
    def __init__(
        self,
        settings: Settings,
        runtime: LocalRuntime,
        credentials: Credentials,
        authorizer: Authorizer,
        ui_sessions: UiSessions,
        lookup: ServerLookup,
        audit: AuditTrail,
        bus: EventBus,
        registry_sync: RegistrySync,
        metrics: Recorder,
        handover: Handover,
    ) -> None:
        self._settings = settings
        self._handover = handover
        self._runtime = runtime
        self._credentials = credentials
        self._authorizer = authorizer
        self._ui = ui_sessions
        self._lookup = lookup
        self._audit = audit
        self._bus = bus
        self._registry_sync = registry_sync
        # Requests, waits and latency per server id, for the console's charts.
        self._metrics = metrics
        self._servers: dict[str, ServerRecord] = {}
        self._load: dict[str, ServerLoad] = {}
        self._client: aiohttp.ClientSession | None = None
        arn_prefix = f"arn:aws:sagemaker:{settings.region}:{settings.account_id}:"
        self._arn_prefix = arn_prefix + "mlflow-tracking-server/"

    async def start(self) -> None:
        # No decompression: bytes pass through with their Content-Encoding intact.
        self._client = socket_session(
            self._runtime.sandbox.run_dir,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    # routing -------------------------------------------------------------------------------

    async def by_path(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        prefix = f"/mlflow/{name}"
        upstream = request.raw_path[len(prefix) :]
        if not upstream.startswith("/"):
            raise web.HTTPFound(f"{prefix}/")
        if upstream.split("?", 1)[0] == "/auth":
            return await self._open_ui_session(request, name)
        return await self._serve(request, Route(name, upstream, prefix))

    async def by_arn_header(self, request: web.Request) -> web.StreamResponse:
        arn = request.headers.get(ARN_HEADER)
        if not arn:
            return mlflow_error(
                404,
                "ENDPOINT_NOT_FOUND",
                f"No tracking server addressed: use a TrackingServerUrl (/mlflow/<name>/...) "
                f"or send the {ARN_HEADER} header (the sagemaker-mlflow plugin does).",
            )
        if not arn.startswith(self._arn_prefix) or len(arn) == len(self._arn_prefix):
            return mlflow_error(
                404,
                "RESOURCE_DOES_NOT_EXIST",
                f"{arn} is not a tracking server of this mlfleet "
                f"(expected {self._arn_prefix}<name>).",
            )
        return await self._serve(request, Route(arn[len(self._arn_prefix) :], request.raw_path))

    # authentication ------------------------------------------------------------------------

    async def _authenticate(
        self, request: web.Request, server_id: str
    ) -> tuple[Principal, bytes | None, str | None]:
        """Return the caller, the body if it was read, and the SigV4 payload hash to enforce."""
        header = request.headers.get("Authorization", "")
        if header.startswith("AWS4-HMAC-SHA256"):
            length = request.content_length or 0
            claimed = request.headers.get("x-amz-content-sha256")
            # A large body with a signed hash is streamed and checked on the way; others are
            # read here and verified whole.
            streamed = length > BUFFER_LIMIT and bool(claimed) and claimed != "UNSIGNED-PAYLOAD"
            body = None if streamed else await request.read()
            payload_hash = claimed if streamed else None
            principal = self._credentials.verify_sigv4(
                request,
                body,
                service="sagemaker-mlflow",
                payload_hash=payload_hash,
            )
            return principal, body, payload_hash
        if header.startswith("Basic "):
            return self._credentials.verify_basic(header), None, None
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie:
            session = self._ui.lookup(cookie)
            if session is not None and session.server_id == server_id:
                self._check_origin(request)
                return session.principal, None, None
            raise AuthenticationError(
                "Your MLflow UI session has expired: open the UI again through "
                "CreatePresignedMlflowTrackingServerUrl."
            )
        raise AuthenticationError(
            "Authentication required: sign requests with SigV4 (sagemaker-mlflow plugin), use "
            "HTTP Basic with an access key id and secret (MLFLOW_TRACKING_USERNAME/PASSWORD), "
            "or open the UI through a presigned URL."
        )

    def _check_origin(self, request: web.Request) -> None:
        # Cookie-authenticated writes must come from the UI itself, not from another site.
        origin = request.headers.get("Origin")
        if request.method in SAFE_METHODS or origin is None:
            return
        if origin not in (f"{request.scheme}://{request.host}", self._settings.endpoint_url):
            raise AuthenticationError(f"Cross-origin request from {origin} refused.", 403)

    async def _open_ui_session(self, request: web.Request, name: str) -> web.StreamResponse:
        found = self._lookup(name)
        token = request.query.get("authToken", "")
        redeemed = self._ui.redeem(found.id, token) if found and token else None
        if redeemed is None:
            return web.Response(
                status=403,
                text="This sign-in link is invalid, expired or already used. Ask for a new one "
                "with CreatePresignedMlflowTrackingServerUrl.\n",
            )
        cookie, lifetime = redeemed
        response = web.HTTPFound(f"/mlflow/{name}/")
        response.set_cookie(
            COOKIE_NAME,
            cookie,
            max_age=lifetime,
            path=f"/mlflow/{name}/",
            httponly=True,
            samesite="Lax",
            secure=request.secure,
        )
        return response

    # serving -------------------------------------------------------------------------------

    def forget_server(self, name: str) -> None:
        """Drop what is cached of a server whose record changed (its tags, say)."""
        self._servers.pop(name, None)
        # Connections handed over to workers were decided on the old record.
        self._runtime.generation.bump()

    def _server(self, name: str) -> ServerRecord | None:
        # A serving server's record is current: its status, which is not used then, changes
        # while it serves; tag changes call forget_server; a deleted server stops serving.
        cached = self._servers.get(name)
        if cached is not None and self._runtime.is_serving(cached.id):
            return cached
        found = self._lookup(name)
        if found is None:
            self._servers.pop(name, None)
            return None
        self._servers[name] = found
        return found

    async def _wait_until_serving(self, name: str) -> str | None:
        """For a server that is (re)starting, wait a bounded time; None means give up now."""
        deadline = time.monotonic() + self._settings.gateway_start_wait_seconds
        while time.monotonic() < deadline:
            found = self._lookup(name)
            if found is None:
                return None
            if self._runtime.is_serving(found.id):
                return found.id
            if found.desired_state != "Running" or found.status.endswith("Failed"):
                return None
            await asyncio.sleep(0.1)
        return None

    async def _serve(self, request: web.Request, route: Route) -> web.StreamResponse:
        # Authenticate before saying whether a server exists: names are not for strangers.
        found = self._server(route.name)
        server_id = found.id if found else ""
        try:
            principal, body, payload_hash = await self._authenticate(request, server_id)
        except AuthenticationError as exc:
            headers = {"WWW-Authenticate": 'Basic realm="mlfleet"'} if exc.status == 401 else {}
            response = mlflow_error(
                exc.status,
                "UNAUTHENTICATED" if exc.status == 401 else "PERMISSION_DENIED",
                str(exc),
            )
            response.headers.update(headers)
            return response
        except AwsError as exc:
            return mlflow_error(exc.status, "UNAUTHENTICATED", f"{exc.code}: {exc.message}")
        requirement = required_action(request.method, route.upstream_path)
        if requirement.denied:
            return mlflow_error(403, "PERMISSION_DENIED", requirement.reason)
        action = requirement.action
        started = time.time()
        events_on = data_events_on(found.tags if found else None)
        audited = action is not None and is_write(action) and events_on
        recording: list[asyncio.Future[None]] = []

        async def record_forwarded() -> None:
            # The data event is made durable while MLflow does the work, not after it: an
            # audited write then costs no extra latency. What MLflow answers is recorded
            # only if it is a failure, as a second record.
            assert action is not None
            event = await self._data_event(request, route, principal, action, started, None)
            recording.append(asyncio.ensure_future(self._audit.record_data_event(event)))

        response = await self._authorized(
            request,
            route,
            found,
            principal,
            body,
            payload_hash,
            action,
            record_forwarded if audited else None,
        )
        if action is not None and is_write(action):
            if audited and (not recording or response.status >= 400):
                # Refused by the gateway itself, or failed in MLflow: the outcome, recorded.
                failure = await self._data_event(
                    request, route, principal, action, started, response
                )
                await self._audit.record_data_event(failure)
            if recording:
                await recording[0]
            if response.status == 200 and action.split(":", 1)[1] in MLFLOW_DETAIL_TYPES:
                await self._announce(request, route, principal, action, response)
            if response.status == 200 and found and found.automatic_model_registration:
                await self._register(request, route, found, action, response)
        if found is not None:
            await self._handover.offer(
                request,
                response,
                found.id,
                self._arn_prefix + route.name,
                route.prefix,
                principal,
                facts_of(request, found),
                events_on,
            )
        return response

    async def _register(
        self,
        request: web.Request,
        route: Route,
        server: ServerRecord,
        action: str,
        response: web.StreamResponse,
    ) -> None:
        """Automatic registration (mlfleet.registry.sync); a failure is logged, never the
        caller's: the MLflow call succeeded, and reconciliation registers what was missed."""
        sync_server = SyncServer(
            server.id, route.name, self._arn_prefix + route.name, server.role_arn
        )
        try:
            if action == CREATE_MODEL_VERSION:
                answer = response.body if isinstance(response, web.Response) else None
                created = json_or_none(answer) if isinstance(answer, bytes) else None
                if isinstance(created, dict) and "model_version" in created:
                    await self._registry_sync.version_created(sync_server, created["model_version"])
            elif action == SET_ALIAS:
                asked = json_or_none(await request.read())
                if isinstance(asked, dict):
                    await self._registry_sync.alias_set(sync_server, asked)
        except Exception:
            log.exception("automatic registration on %s failed; reconciliation retries", route.name)

    async def call_mlflow(
        self, server_id: str, method: str, path: str, body: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """Call a server's MLflow API as mlfleet itself (registry sync), through its workers."""
        assert self._client is not None
        worker = await self._acquire(server_id, admission=True)
        if worker is None:
            raise RuntimeError(f"tracking server {server_id} is not serving")
        try:
            # The pooled client sends no Content-Type of its own (the proxy relays the caller's).
            headers = {"Content-Type": "application/json"} if body is not None else {}
            async with self._client.request(
                method, worker.url(path), json=body, headers=headers
            ) as answer:
                data = await answer.json(content_type=None)
                if answer.status != 200:
                    raise RuntimeError(f"MLflow answered {answer.status} to {path}: {data}")
                return dict(data)
        finally:
            self._release(server_id, worker)

    async def _authorized(
        self,
        request: web.Request,
        route: Route,
        found: ServerRecord | None,
        principal: Principal,
        body: bytes | None,
        payload_hash: str | None,
        action: str | None,
        before_forwarding: Callable[[], Awaitable[None]] | None,
    ) -> web.StreamResponse:
        """Authorize, check the input, and forward if the server serves."""
        server_id = found.id if found else ""
        if action is not None:
            # Decided before the server's existence is revealed, on the ARN the name gives.
            arn = self._arn_prefix + route.name
            result = self._authorizer.check(principal, action, arn, facts_of(request, found))
            if not result.allowed:
                message = denial_message(principal, action, arn, result)
                return mlflow_error(403, "PERMISSION_DENIED", message)
        if found is None:
            return mlflow_error(
                404, "RESOURCE_DOES_NOT_EXIST", f"Tracking server {route.name} does not exist."
            )
        # Only for callers allowed the action: traversal in artifact paths, foreign sources and
        # locations, oversized bodies (hardening), checked before anything reaches MLflow.
        refusal, body = await screen(
            request, route.upstream_path, body, payload_hash, self._settings.max_api_body_bytes
        )
        if refusal is not None:
            return mlflow_error(refusal.status, refusal.code, refusal.message)

        status = found.status
        if not self._runtime.is_serving(server_id):
            if found.desired_state == "Running" and not status.endswith("Failed"):
                waited = await self._wait_until_serving(route.name)
                if waited is None:
                    return mlflow_error(
                        503,
                        "TEMPORARILY_UNAVAILABLE",
                        f"Tracking server {route.name} is not serving yet (status {status}).",
                    )
                server_id = waited
            else:
                return mlflow_error(
                    409,
                    "INVALID_STATE",
                    f"Tracking server {route.name} is {status}: it does not serve requests. "
                    "Start it with StartMlflowTrackingServer.",
                )
        if before_forwarding is not None:
            await before_forwarding()
        forwarded = time.perf_counter()
        response = await self._forward(request, server_id, route, body, payload_hash)
        self._metrics.request(server_id, response.status, time.perf_counter() - forwarded)
        return response

    async def _announce(
        self,
        request: web.Request,
        route: Route,
        principal: Principal,
        action: str,
        response: web.StreamResponse,
    ) -> None:
        """One of SageMaker's five MLflow events; stored before the answer leaves."""
        answer = response.body if isinstance(response, web.Response) else None
        event = mlflow_event(
            action.split(":", 1)[1],
            self._arn_prefix + route.name,
            route.name,
            principal.arn,
            json_or_none(await request.read()),
            json_or_none(answer) if isinstance(answer, bytes) else None,
        )
        if event is not None:
            await asyncio.to_thread(self._bus.publish, [event])

    async def _data_event(
        self,
        request: web.Request,
        route: Route,
        principal: Principal,
        action: str,
        started: float,
        response: web.StreamResponse | None,
    ) -> DataEvent:
        """An MLflow write as a data event: as forwarded (no response yet), or its outcome."""
        kept = keeps_body(route.upstream_path, request.content_length)
        answer = response.body if isinstance(response, web.Response) else None
        return data_event(
            principal=principal,
            action=action,
            resource=self._arn_prefix + route.name,
            started=started,
            source_ip=request.remote,
            user_agent=request.headers.get("User-Agent", ""),
            method=request.method,
            upstream_path=route.upstream_path,
            body=await request.read() if kept else None,
            status=response.status if response is not None else None,
            answer=answer if isinstance(answer, bytes) else None,
        )

    async def _acquire(self, server_id: str, admission: bool) -> Worker | None:
        """The least-loaded healthy worker; with ``admission``, wait for a free slot first."""
        load = self._load.setdefault(server_id, ServerLoad())
        cap = self._settings.max_inflight_per_worker
        throttled = False
        while True:
            procs = self._runtime.get(server_id)
            if procs is None or not procs.serving:
                return None
            best = min(
                (w for w in procs.workers if w.healthy),
                key=lambda w: load.inflight.get(w.name, 0),
            )
            taken = load.inflight.get(best.name, 0)
            if taken < cap or not admission:
                load.inflight[best.name] = taken + 1
                return best
            if not throttled:  # the charts count requests that wait, not rounds of waiting
                throttled = True
                self._metrics.throttled(server_id)
            turn = asyncio.get_running_loop().create_future()
            load.waiting.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._wake_next(load)  # woken, then cancelled: pass the free slot on
                raise

    def _release(self, server_id: str, worker: Worker) -> None:
        load = self._load[server_id]
        load.inflight[worker.name] -= 1
        self._wake_next(load)

    @staticmethod
    def _wake_next(load: ServerLoad) -> None:
        while load.waiting:
            turn = load.waiting.popleft()
            if not turn.done():  # a waiter whose client went away was cancelled
                turn.set_result(None)
                return

    async def _forward(
        self,
        request: web.Request,
        server_id: str,
        route: Route,
        body: bytes | None,
        payload_hash: str | None,
    ) -> web.StreamResponse:
        assert self._client is not None
        admission = "/mlflow-artifacts/" not in route.upstream_path
        worker = await self._acquire(server_id, admission)
        if worker is None:
            return mlflow_error(
                503, "TEMPORARILY_UNAVAILABLE", f"Tracking server {route.name} stopped serving."
            )
        try:
            headers = CIMultiDict(
                (k, v) for k, v in request.headers.items() if k.lower() not in STRIPPED_REQUEST
            )
            data: bytes | AsyncIterator[bytes] | None = body
            if data is None and request.body_exists:
                length = request.content_length
                if payload_hash is None and length is not None and length <= BUFFER_LIMIT:
                    data = await request.read()  # one write upstream beats a chunk stream
                else:
                    data = _verified(request.content, payload_hash)
            url = worker.url(route.upstream_path)
            try:
                async with self._client.request(
                    request.method, url, headers=headers, data=data, allow_redirects=False
                ) as upstream:
                    return await self._relay(request, upstream)
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                log.warning("upstream %s for %s failed: %s", url, route.name, exc)
                return mlflow_error(
                    502,
                    "TEMPORARILY_UNAVAILABLE",
                    f"Tracking server {route.name} did not answer ({exc.__class__.__name__}).",
                )
            except BodyHashMismatch:
                return mlflow_error(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    "The request body does not match its signed X-Amz-Content-SHA256.",
                )
        finally:
            self._release(server_id, worker)

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        headers = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in STRIPPED_RESPONSE
        )
        length = upstream.content_length
        if length is not None and length <= SMALL_RESPONSE:
            payload = await upstream.read()
            return web.Response(status=upstream.status, headers=headers, body=payload)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response


def facts_of(request: web.Request, server: ServerRecord | None) -> RequestFacts:
    return RequestFacts(
        source_ip=request.remote,
        secure_transport=request.secure,
        resource_tags=server.tags if server else (),
    )


class BodyHashMismatch(Exception):
    pass


async def _verified(content: aiohttp.StreamReader, expected: str | None) -> AsyncIterator[bytes]:
    """Stream a body, holding back its last chunk until the signed SHA-256 is confirmed.

    MLflow then never receives the complete body of a request whose payload was swapped.
    """
    digest = hashlib.sha256()
    held: bytes | None = None
    async for chunk in content.iter_chunked(CHUNK):
        if held is not None:
            yield held
        digest.update(chunk)
        held = chunk
    if expected is not None and digest.hexdigest() != expected:
        raise BodyHashMismatch
    if held is not None:
        yield held
