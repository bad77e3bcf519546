"""The gateway refuses routes a tenant must not reach, through the real daemon and MLflow.

Requests go out through ``http.client``, which sends a path exactly as written: the forms a
normalising client would clean up (``..``, ``%2e%2e``, ``#``) reach the gateway as an attacker
would send them.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from mlfleet.gateway.proxy import ARN_HEADER
from mlfleet.mlflow_api.actions import required_action
from mlfleet.runtime.sockets import socket_session, socket_url
from support.daemon import Daemon

ADDRESSING = ["url", "arn"]  # TrackingServerUrl path prefix, or ARN header (sagemaker-mlflow)


def send(
    daemon: Daemon,
    server: dict[str, Any],
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    by: str = "url",
) -> tuple[http.client.HTTPResponse, bytes]:
    """Send ``path`` (MLflow's, e.g. /api/2.0/...) to ``server`` byte for byte; the answer."""
    key, secret = daemon.credentials
    headers = {"Authorization": "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()}
    if by == "url":
        target = urlsplit(server["TrackingServerUrl"]).path + path
    else:
        target = path
        headers[ARN_HEADER] = server["TrackingServerArn"]
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    try:
        connection.request(method, target, body=payload, headers=headers)
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def call(*args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """As ``send``; the status and the JSON answer."""
    response, data = send(*args, **kwargs)
    return response.status, json.loads(data) if data else {}


@pytest.mark.parametrize("by", ADDRESSING)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/ajax-api/3.0/mlflow/assistant/message"),
        ("POST", "/ajax-api/3.0/jobs/"),
        ("GET", "/api/2.0/mlflow/webhooks"),
    ],
)
def test_denied_routes_are_refused_with_the_reason(
    daemon: Daemon, shared_server: dict[str, Any], method: str, path: str, by: str
) -> None:
    status, error = call(daemon, shared_server, method, path, {}, by=by)
    assert status == 403, error
    assert error == {
        "error_code": "PERMISSION_DENIED",
        "message": required_action(method, path).reason,
    }
    assert error["message"]


@pytest.mark.parametrize("by", ADDRESSING)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/ajax-api/2.0/mlflow/users/current"), ("POST", "/api/2.0/mlflow/users/create")],
)
def test_user_administration_is_not_found_as_in_mlflow_without_its_auth_app(
    daemon: Daemon, shared_server: dict[str, Any], method: str, path: str, by: str
) -> None:
    status, error = call(daemon, shared_server, method, path, {}, by=by)
    assert status == 404, error
    assert error == {
        "error_code": "ENDPOINT_NOT_FOUND",
        "message": required_action(method, path).reason,
    }


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/ajax-api/2.0/mlflow/gateway-proxy?gateway_path=api/2.0/endpoints/", None),
        # A tenant names only the path under the operator's target; with none, nothing is sent.
        (
            "POST",
            "/ajax-api/2.0/mlflow/gateway-proxy",
            {"gateway_path": "gateway/x/invocations", "json_data": {"prompt": "hi"}},
        ),
    ],
)
def test_gateway_proxy_is_answered_by_mlflow_without_a_target(
    daemon: Daemon, shared_server: dict[str, Any], method: str, path: str, body: Any
) -> None:
    assert call(daemon, shared_server, method, path, body) == (200, {"endpoints": []})


def test_the_assistant_settings_are_mlflows_and_using_it_is_refused(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    status, config = call(daemon, shared_server, "GET", "/ajax-api/3.0/mlflow/assistant/config")
    assert (status, config) == (
        200,
        {"providers": {}, "projects": {}, "remote_access_allowed": False},
    )
    status, providers = call(
        daemon, shared_server, "GET", "/ajax-api/3.0/mlflow/assistant/providers"
    )
    # MLflow's own list (the AI gateway's provider is available once the server has endpoints);
    # MLflow's switch for remote use (MLFLOW_ENABLE_REMOTE_ASSISTANT) stays off, as the
    # config's remote_access_allowed above says, and using the Assistant is refused below.
    assert status == 200 and providers["providers"], providers
    status, error = call(
        daemon, shared_server, "PUT", "/ajax-api/3.0/mlflow/assistant/config", {"providers": {}}
    )
    assert status == 403 and error["error_code"] == "PERMISSION_DENIED", error


def test_a_denied_route_never_reaches_mlflow(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    # Creating a webhook is a database write MLflow would make: its absence shows that MLflow
    # never saw the request (the workers keep no access log).
    name = f"hook-{uuid.uuid4().hex[:8]}"
    webhook = {
        "name": name,
        "url": "https://1.1.1.1/hook",
        "status": "DISABLED",  # should a regression let it through: no deliveries
        "events": [{"entity": "REGISTERED_MODEL", "action": "CREATED"}],
    }
    status, error = call(daemon, shared_server, "POST", "/api/2.0/mlflow/webhooks", webhook)
    databases = list((daemon.data_dir / "servers").glob("*/mlflow.db"))
    assert databases
    for database in databases:
        with sqlite3.connect(database) as conn:
            rows = conn.execute("SELECT name FROM webhooks WHERE name = ?", (name,)).fetchall()
        assert rows == []
    assert status == 403, error


@pytest.mark.parametrize("by", ADDRESSING)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/2.0/mlflow/new-feature"),
        ("GET", "/ajax-api/3.0/mlflow/new-feature"),
        ("DELETE", "/api/2.0/mlflow/runs/get"),
    ],
)
def test_unknown_routes_are_refused(
    daemon: Daemon, shared_server: dict[str, Any], method: str, path: str, by: str
) -> None:
    status, error = call(daemon, shared_server, method, path, {}, by=by)
    assert status == 403, error
    assert error["error_code"] == "PERMISSION_DENIED"
    assert "no sagemaker-mlflow action is mapped" in error["message"]


@pytest.mark.parametrize("by", ADDRESSING)
@pytest.mark.parametrize(
    "path",
    [
        "/api/2.0/mlflow-artifacts/artifacts/../../mlflow/registered-models/delete",
        "/api/2.0/mlflow-artifacts/artifacts/%2e%2e/%2e%2e/mlflow/registered-models/delete",
        "/api/2.0/mlflow-artifacts/artifacts/%2E%2E/../mlflow/registered-models/delete",
        "/api/2.0/mlflow-artifacts/artifacts/1%2F..%2F..%2Fmlflow/registered-models/delete",
        "/api/2.0/mlflow-artifacts/artifacts/./../../mlflow/registered-models/delete",
    ],
)
def test_path_traversal_cannot_reach_another_route(
    daemon: Daemon, shared_server: dict[str, Any], path: str, by: str
) -> None:
    name = f"kept-{uuid.uuid4().hex[:8]}"
    created, _ = call(
        daemon, shared_server, "POST", "/api/2.0/mlflow/registered-models/create", {"name": name}
    )
    assert created == 200

    # Refused by the gateway itself: MLflow, which sends the path verbatim, would answer 400.
    status, error = call(daemon, shared_server, "DELETE", path, {"name": name}, by=by)
    assert (status, error.get("message")) == (403, required_action("DELETE", path).reason)

    found, model = call(
        daemon, shared_server, "GET", f"/api/2.0/mlflow/registered-models/get?name={name}"
    )
    assert found == 200 and model["registered_model"]["name"] == name


def test_a_fragment_cannot_shorten_the_route(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    # Checked as DELETE .../tags/t (DeleteLoggedModelTag); a client that dropped the fragment
    # would send DELETE logged-models/<id> (DeleteLoggedModel).
    _, experiment = call(
        daemon,
        shared_server,
        "POST",
        "/api/2.0/mlflow/experiments/create",
        {"name": f"fragment-{uuid.uuid4().hex[:8]}"},
    )
    created, logged = call(
        daemon,
        shared_server,
        "POST",
        "/api/2.0/mlflow/logged-models",
        {"experiment_id": experiment["experiment_id"]},
    )
    assert created == 200, logged
    model_id = logged["model"]["info"]["model_id"]

    path = f"/api/2.0/mlflow/logged-models/{model_id}#/tags/t"
    status, error = call(daemon, shared_server, "DELETE", path)
    assert (status, error.get("message")) == (403, required_action("DELETE", path).reason)

    found, model = call(daemon, shared_server, "GET", f"/api/2.0/mlflow/logged-models/{model_id}")
    assert found == 200 and model["model"]["info"]["model_id"] == model_id


@pytest.mark.parametrize("by", ADDRESSING)
def test_ordinary_routes_are_forwarded(
    daemon: Daemon, shared_server: dict[str, Any], by: str
) -> None:
    for method, path, body in [
        ("GET", "/api/3.0/mlflow/server-info", None),
        ("POST", "/api/2.0/mlflow/experiments/search", {"max_results": 1}),
    ]:
        status, answer = call(daemon, shared_server, method, path, body, by=by)
        assert status == 200, (path, answer)


@pytest.mark.parametrize(
    "path",
    [
        "/api/2.0/mlflow-artifacts/artifacts/../../mlflow/registered-models/delete",
        "/api/2.0/mlflow-artifacts/artifacts/%2e%2e/%2E%2E/mlflow/registered-models/delete",
        "/api/2.0/mlflow/runs/get?run_id=%2e%2e&x=%41",
        "/static-files/%7Euser/./a%2Fb.js",
    ],
)
def test_the_upstream_url_is_sent_byte_for_byte(path: str, tmp_path: Path) -> None:
    # The gateway's own client must not resolve or re-quote what required_action checked; it
    # reaches the worker's Unix socket with MLflow's idea of a local Host.
    async def round_trip() -> tuple[str, str]:
        async def echo(request: web.Request) -> web.Response:
            return web.Response(text=f"{request.headers['Host']} {request.raw_path}")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        (tmp_path / "s-test").mkdir()
        site = web.UnixSite(runner, str(tmp_path / "s-test" / "w-0.sock"))
        await site.start()
        try:
            async with (
                socket_session(tmp_path) as client,
                client.delete(socket_url("s-test", "w-0", path)) as response,
            ):
                host, _, raw_path = (await response.text()).partition(" ")
                return host, raw_path
        finally:
            await runner.cleanup()

    assert asyncio.run(round_trip()) == ("localhost", path)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        # Served by MLflow's Flask app, which the worker calls without the FastAPI middleware
        ("POST", "/api/2.0/mlflow/experiments/search", {"max_results": 1}),
        ("GET", "/", None),
        # Served by MLflow's FastAPI app itself
        ("GET", "/api/3.0/mlflow/server-info", None),
    ],
)
def test_mlflow_keeps_its_own_response_hardening(
    daemon: Daemon,
    shared_server: dict[str, Any],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    response, _ = send(daemon, shared_server, method, path, body)
    assert response.status == 200
    assert response.getheader("X-Content-Type-Options") == "nosniff", response.getheaders()
