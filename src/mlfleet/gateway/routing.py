"""Routing: which tracking server a data-plane request is for, and what is known of it.

A request names its server either in its path, a TrackingServerUrl (``/mlflow/<name>/...``; an
MLflow App's id is its name there), or, on MLflow's own paths (``/api/...``, ``/ajax-api/...``),
in the ARN header that the sagemaker-mlflow plugin sends (``x-mlflow-sm-tracking-server-arn``
for a tracking server, signed for ``sagemaker-mlflow``; ``x-sm-mlflow-app-arn`` for an App,
signed for ``sagemaker``). ``Routing`` turns either into a ``Route``; a request that names
no server of this mlfleet gets MLflow's 404 instead.

Server records come from the control plane through a ``ServerLookup``. The record of a server
that serves is kept and used as is until ``forget_server`` (its tags changed, say); the record
of one that does not serve is read again on every request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from mlfleet.gateway.errors import mlflow_error
from mlfleet.mlflow_api.hardening import APP_ARN_HEADER, ARN_HEADER
from mlfleet.runtime.local import LocalRuntime
from mlfleet.settings import Settings


@dataclass(frozen=True)
class Route:
    """Where a data-plane request goes: which server, and the path MLflow should see."""

    name: str
    upstream_path: str
    # The server's ARN, which policies and records name.
    arn: str
    # What precedes upstream_path in the client's URL: "/mlflow/<name>", or "" (ARN header).
    prefix: str = ""
    # The service SigV4 signatures are made for.
    signing_service: str = "sagemaker-mlflow"


@dataclass(frozen=True)
class ServerRecord:
    """What the gateway needs to know of a tracking server, read from the control plane."""

    id: str
    status: str
    desired_state: str
    tags: tuple[dict[str, str], ...] = ()
    role_arn: str = ""
    automatic_model_registration: bool = False
    artifact_store_uri: str = ""
    # Idle past its timeout (fleet.idle): its next request wakes it.
    asleep: bool = False
    arn: str = ""
    # "server", or "app" for an MLflow App (TrackingServer.kind).
    kind: str = "server"


# name -> the server's record, or None for an unknown name.
ServerLookup = Callable[[str], ServerRecord | None]


class Routing:
    def __init__(self, settings: Settings, runtime: LocalRuntime, lookup: ServerLookup) -> None:
        self._runtime = runtime
        # Uncached: the record as the control plane has it now.
        self.lookup = lookup
        self._servers: dict[str, ServerRecord] = {}
        arn_prefix = f"arn:aws:sagemaker:{settings.region}:{settings.account_id}:"
        self._arn_prefix = arn_prefix + "mlflow-tracking-server/"
        self._headers = (
            (ARN_HEADER, self._arn_prefix, "sagemaker-mlflow"),
            (APP_ARN_HEADER, arn_prefix + "mlflow-app/", "sagemaker"),
        )

    def by_path(self, request: web.Request) -> Route:
        """The route of ``/mlflow/<name>/...``; ``/mlflow/<name>`` is redirected to its folder."""
        name = request.match_info["name"]
        prefix = f"/mlflow/{name}"
        upstream = request.raw_path[len(prefix) :]
        if not upstream.startswith("/"):
            raise web.HTTPFound(f"{prefix}/")
        return Route(name, upstream, self._arn_prefix + name, prefix)

    def by_arn_header(self, request: web.Request) -> Route | web.Response:
        """The route of an MLflow path with the server's ARN header, or the 404 for a request
        with no such header or with the ARN of no tracking server of this mlfleet."""
        addressed = next(
            (
                (request.headers[h], prefix, service)
                for h, prefix, service in self._headers
                if request.headers.get(h)
            ),
            None,
        )
        if addressed is None:
            return mlflow_error(
                404,
                "ENDPOINT_NOT_FOUND",
                f"No tracking server addressed: use a TrackingServerUrl (/mlflow/<name>/...) "
                f"or send the {ARN_HEADER} or {APP_ARN_HEADER} header (the sagemaker-mlflow "
                "plugin does).",
            )
        arn, prefix, service = addressed
        if not arn.startswith(prefix) or len(arn) == len(prefix):
            return mlflow_error(
                404,
                "RESOURCE_DOES_NOT_EXIST",
                f"{arn} is not a tracking server or MLflow App of this mlfleet "
                f"(expected {prefix}<id>).",
            )
        return Route(arn[len(prefix) :], request.raw_path, arn, signing_service=service)

    def server(self, name: str) -> ServerRecord | None:
        """The record of the server called ``name``, None if there is none."""
        # A serving server's record is current: its status, which is not used then, changes
        # while it serves; tag changes call forget_server; a deleted server stops serving.
        cached = self._servers.get(name)
        if cached is not None and self._runtime.is_serving(cached.id):
            return cached
        found = self.lookup(name)
        if found is None:
            self._servers.pop(name, None)
            return None
        self._servers[name] = found
        return found

    def forget_server(self, name: str) -> None:
        """Drop what is cached of a server whose record changed (its tags, say)."""
        self._servers.pop(name, None)
        # Connections handed over to workers were decided on the old record.
        self._runtime.generation.bump()
