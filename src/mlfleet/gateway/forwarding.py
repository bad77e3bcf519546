"""Forwarding: a request to the worker admission chose, over its Unix socket, and back.

``forward`` sends the request as MLflow should see it (the route's upstream path, the caller's
headers minus ``STRIPPED_REQUEST``) and relays MLflow's answer (minus ``STRIPPED_RESPONSE``,
bytes with their Content-Encoding intact). Bodies are streamed both ways: no body larger than
``BUFFER_LIMIT`` or answer larger than ``SMALL_RESPONSE`` is held in memory. A small answer
comes back as an unsent ``web.Response`` whose body later steps may read; a larger one has been
streamed to the client already. A streamed body with a signed payload hash is checked on the
way and its last chunk held back until the hash matches, so MLflow never receives the whole of
a swapped body (400 instead). A worker that cannot be reached raises :class:`WorkerUnreachable`
(nothing was sent: the request may go to another worker); one that fails once the request was
sent, a 503 with Retry-After (MLflow clients retry it).

``call`` is mlfleet's own JSON call to a worker's MLflow API; ``open`` one of its own streamed
both ways (the S3 endpoint's artifact transfers).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from mlfleet.gateway.errors import mlflow_error, unavailable
from mlfleet.gateway.routing import Route
from mlfleet.mlflow_api.hardening import STRIPPED_REQUEST, STRIPPED_RESPONSE
from mlfleet.mlflow_api.s3_view import ToS3View
from mlfleet.runtime.local import Worker
from mlfleet.runtime.sockets import socket_session

log = logging.getLogger(__name__)

# Bodies up to this size are read whole (and hashed for SigV4); larger ones are streamed.
BUFFER_LIMIT = 8 * 1024 * 1024
SMALL_RESPONSE = 1024 * 1024
CHUNK = 256 * 1024


class BodyHashMismatch(Exception):
    pass


class MlflowRefused(RuntimeError):
    """MLflow answered mlfleet's own call with an error ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WorkerUnreachable(Exception):
    """The worker's socket refused the connection (it died, or is being replaced): the request
    was not sent."""


class Forwarding:
    def __init__(self, run_dir: Path) -> None:
        # Where the workers' sockets are.
        self._run_dir = run_dir
        self._client: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No decompression: bytes pass through with their Content-Encoding intact.
        self._client = socket_session(
            self._run_dir,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def forward(
        self,
        request: web.Request,
        worker: Worker,
        route: Route,
        body: bytes | None,
        payload_hash: str | None,
        view: str | None = None,
    ) -> web.StreamResponse:
        """MLflow's answer to ``request``; ``body`` is None unless it was read, and
        ``payload_hash`` the signed SHA-256 to check a body streamed unread against. ``view``:
        the bucket of an ARN caller's S3 view, for an answer too large to hold."""
        assert self._client is not None
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in STRIPPED_REQUEST
        )
        data: bytes | AsyncIterator[bytes] | None = body
        if body is not None:
            # The body read may have been changed on the way (an ARN caller's S3 view): aiohttp
            # gives the length of what is sent.
            headers.popall("Content-Length", None)
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
                return await _relay(request, upstream, view)
        except aiohttp.ClientConnectorError as exc:
            raise WorkerUnreachable(str(exc)) from exc
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            log.warning("upstream %s for %s failed: %s", url, route.name, exc)
            return unavailable(
                f"Tracking server {route.name} did not answer ({exc.__class__.__name__})."
            )
        except BodyHashMismatch:
            return mlflow_error(
                400,
                "INVALID_PARAMETER_VALUE",
                "The request body does not match its signed X-Amz-Content-SHA256.",
            )

    async def call(
        self, worker: Worker, method: str, path: str, body: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """MLflow's JSON answer to mlfleet's own call; any other status raises MlflowRefused."""
        assert self._client is not None
        # The pooled client sends no Content-Type of its own (the proxy relays the caller's).
        headers = {"Content-Type": "application/json"} if body is not None else {}
        async with self._client.request(
            method, worker.url(path), json=body, headers=headers
        ) as answer:
            data = await answer.json(content_type=None)
            if answer.status != 200:
                raise MlflowRefused(answer.status, f"MLflow answered {answer.status} to {path}")
            return dict(data)

    def open(
        self,
        worker: Worker,
        method: str,
        target: str,
        *,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """``async with`` the worker's answer to a request of mlfleet's own; a worker that
        cannot be reached raises aiohttp.ClientConnectorError on entering."""
        assert self._client is not None
        return self._client.request(
            method, worker.url(target), data=data, headers=headers, allow_redirects=False
        )


async def _relay(
    request: web.Request, upstream: aiohttp.ClientResponse, view: str | None
) -> web.StreamResponse:
    headers = CIMultiDict(
        (k, v) for k, v in upstream.headers.items() if k.lower() not in STRIPPED_RESPONSE
    )
    length = upstream.content_length
    if length is not None and length <= SMALL_RESPONSE:
        payload = await upstream.read()
        return web.Response(status=upstream.status, headers=headers, body=payload)
    # A large JSON answer is streamed, in the ARN caller's view (mlflow_api.s3_view) when it
    # has one; a small one is left to the gateway, whose later steps read MLflow's own.
    rewriter = ToS3View(view) if view and _is_json(upstream) else None
    response = web.StreamResponse(status=upstream.status, headers=headers)
    if length is not None and rewriter is None:
        response.content_length = length
    await response.prepare(request)
    async for chunk in upstream.content.iter_chunked(CHUNK):
        await response.write(rewriter.feed(chunk) if rewriter else chunk)
    if rewriter is not None:
        await response.write(rewriter.end())
    await response.write_eof()
    return response


async def _verified(content: aiohttp.StreamReader, expected: str | None) -> AsyncIterator[bytes]:
    """Stream a body, holding back its last chunk until the signed SHA-256 is confirmed."""
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


def _is_json(upstream: aiohttp.ClientResponse) -> bool:
    return "json" in upstream.content_type and "Content-Encoding" not in upstream.headers
