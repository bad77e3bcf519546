"""One MLflow tracking-server worker: a single uvicorn process serving MLflow's own app.

The daemon runs this instead of ``mlflow server`` because the CLI keeps a parent process
alive next to its workers and would spawn a job runner; the environment it hands
its workers is reproduced here from MLflow's own constants, so upgrades keep working.
The worker serves on the Unix socket the daemon names (runtime.sockets), never on TCP: only
the daemon can reach it.

MLflow's ASGI app is a FastAPI app with a few native routes (artifact transfers, OTLP traces,
server info, ...) and its Flask app mounted under everything else, behind a chain of
middleware: host validation, CORS, security headers, workspace context. The Flask app applies
the same checks itself when it runs as a server (MLflow's gunicorn and waitress modes), so the
chain only repeats them, at a cost the README's "How it is built" quotes. ``FlaskRoutesDirect``
hands Flask's requests
straight to Flask and leaves the native routes to the FastAPI app; MLflow 2.x has only the
Flask app, which then serves everything. Both answer a write that
fails for lack of space with 507 (runtime.full_storage); a call that meets the database away
for a moment is a 503 with Retry-After (runtime.database_outage).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import sys
import uuid
from typing import TYPE_CHECKING, Any, cast

from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from mlfleet.runtime import egress_forwarder, mlflow_jobs

if TYPE_CHECKING:
    from mlfleet.runtime.stored_events import StoredEvents

BACKEND_STORE_ENV = "MLFLEET_BACKEND_STORE_URI"


class FlaskRoutesDirect:
    """MLflow's ASGI app, with the requests only its Flask app serves sent straight to Flask
    (all of them when there is no ASGI app: MLflow 2.x)."""

    def __init__(self, fastapi_app: Any | None, flask_app: Any) -> None:
        from a2wsgi import WSGIMiddleware

        self.flask_app = flask_app
        # An ASGI app: a2wsgi types its scope and messages as TypedDicts, Starlette as mappings.
        self._flask_app = cast(ASGIApp, WSGIMiddleware(flask_app))
        self._fastapi_app: ASGIApp = fastapi_app or self._flask_app
        native_routes = (
            [r for r in fastapi_app.routes if not isinstance(r, Mount)] if fastapi_app else []
        )

        # Remembered per path: matching walks every native route, and a training loop sends
        # the same few paths over and over.
        @functools.lru_cache(maxsize=4096)
        def is_native(method: str, path: str) -> bool:
            """Whether a FastAPI route answers (or refuses the method of) this request."""
            scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
            return any(route.matches(scope)[0] is not Match.NONE for route in native_routes)

        self.is_native = is_native

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.is_native(scope["method"], scope["path"]):
            await self._flask_app(scope, receive, send)
        else:
            await self._fastapi_app(scope, receive, send)


def build_app() -> FlaskRoutesDirect:
    from mlflow.server import app as flask_app

    from mlfleet.runtime.database_outage import answer_database_outage
    from mlfleet.runtime.full_storage import answer_full_storage

    fastapi_app = None
    if importlib.util.find_spec("mlflow.server.fastapi_app") is not None:
        from mlflow.server.fastapi_app import app as fastapi_app

    answer_full_storage(flask_app, fastapi_app)
    answer_database_outage(flask_app)
    return FlaskRoutesDirect(fastapi_app, flask_app)


def stored_events() -> StoredEvents | None:
    """Data events stored with MLflow's writes, in its database (runtime.stored_events)."""
    from mlflow.server.handlers import _get_tracking_store

    from mlfleet.runtime.stored_events import StoredEvents

    engine = getattr(_get_tracking_store(), "engine", None)
    if engine is None:
        return None
    stored = StoredEvents()
    stored.install(engine)
    return stored


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    # Required of a worker, not of a spare (given once it is assigned).
    parser.add_argument("--socket")
    # Only identifies the process in `ps`; the store URI comes from the environment because
    # it may carry a database password, and command lines are world-readable.
    parser.add_argument("--server-dir")
    parser.add_argument("--artifacts-destination")
    parser.add_argument("--boot-id", default=uuid.uuid4().hex)
    # The daemon's channel for handed-over connections, and its shared generation counter
    # (runtime.handoff); without them the worker serves only its own port.
    parser.add_argument("--handoff-fd", type=int)
    parser.add_argument("--generation-fd", type=int)
    # This worker runs the server's MLflow jobs (runtime.mlflow_jobs).
    parser.add_argument("--run-jobs", action="store_true")
    # A spare (runtime.warm): import MLflow, then wait on this socket for the worker to be.
    parser.add_argument("--spare-fd", type=int)
    return parser


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if args.spare_fd is not None:
        args = _wait_as_spare(parser, args)
    elif args.socket is None or args.artifacts_destination is None:
        parser.error("--socket and --artifacts-destination are required")
    serve(args)


# What `mlflow server` tells every worker, the same for every server: set before a spare imports
# MLflow, as before a cold worker builds its app.
SERVING_ARTIFACTS = {
    "SERVE_ARTIFACTS_ENV_VAR": "true",
    "ARTIFACT_ROOT_ENV_VAR": "mlflow-artifacts:/",
}


def _wait_as_spare(
    parser: argparse.ArgumentParser, spare: argparse.Namespace
) -> argparse.Namespace:
    """Import what a worker needs ahead of time, say so, then wait for the daemon's assignment
    (runtime.warm): the worker's arguments and environment, and its log file, which takes
    over this process's output. Returns the worker's arguments."""
    import socket

    control = socket.socket(fileno=spare.spare_fd)
    import uvicorn  # noqa: F401  (first: mlflow.server looks for it, see serve)

    constants = _constants()
    for name, value in SERVING_ARTIFACTS.items():
        os.environ[getattr(constants, name)] = value
    _preload()
    control.sendall(b"ready")
    message, fds, _, _ = socket.recv_fds(control, 1 << 20, 1)
    if not message:
        raise SystemExit("the daemon went away before this spare was needed")
    assignment = json.loads(message)
    for fd in fds:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    os.environ.update(assignment["env"])
    args = parser.parse_args(assignment["argv"])
    args.handoff_fd, args.generation_fd = spare.handoff_fd, spare.generation_fd
    # `ps` shows what it serves, as for a cold worker (where the release's environment has it).
    with contextlib.suppress(ImportError):
        from setproctitle import setproctitle

        setproctitle(" ".join([sys.executable, "-m", *assignment["title"]]))
    return args


def _preload() -> None:
    """Import what a worker's start would: MLflow's apps and stores, and the worker's own."""
    from mlflow.server import app  # noqa: F401

    for module in (
        "mlflow.server.fastapi_app",  # MLflow 3 only
        "mlflow.store.tracking.sqlalchemy_store",
        "mlflow.store.model_registry.sqlalchemy_store",
        "mlflow.store.artifact.local_artifact_repo",
        "a2wsgi",
        "mlfleet.runtime.database_outage",
        "mlfleet.runtime.full_storage",
        "mlfleet.runtime.fast_lane",
        "mlfleet.runtime.stored_events",
    ):
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def _constants() -> Any:
    """MLflow's server constants (MLflow 2.x keeps these in mlflow.server itself)."""
    return importlib.import_module(
        "mlflow.server.constants"
        if importlib.util.find_spec("mlflow.server.constants") is not None
        else "mlflow.server"
    )


def serve(args: argparse.Namespace) -> None:
    # Before MLflow starts: its HTTP clients go out through the daemon's egress proxy.
    forwarder = egress_forwarder.install(args.socket)

    # mlflow.server decides once, when first imported (here, for its constants), whether it runs
    # as a server: only then does its Flask app get MLflow's host validation, CORS refusal and
    # security headers. It looks for uvicorn among the loaded modules.
    import uvicorn
    from mlflow import environment_variables

    constants = _constants()
    os.environ.update(
        {
            constants.BACKEND_STORE_URI_ENV_VAR: os.environ[BACKEND_STORE_ENV],
            constants.REGISTRY_STORE_URI_ENV_VAR: os.environ[BACKEND_STORE_ENV],
            constants.ARTIFACTS_DESTINATION_ENV_VAR: args.artifacts_destination,
            **{getattr(constants, name): value for name, value in SERVING_ARTIFACTS.items()},
        }
    )
    # What `mlflow server` tells its workers, as far as this release knows each setting.
    for setting, value in (
        ("_MLFLOW_SERVER_BOOT_ID", args.boot_id),
        ("_MLFLOW_IN_JOB_EXECUTOR", "false"),
        ("_MLFLOW_SGI_NAME", "uvicorn"),
    ):
        variable = getattr(environment_variables, setting, None)
        if variable is not None:
            os.environ[variable.name] = value
    runs_jobs = args.run_jobs and mlflow_jobs.available()
    if mlflow_jobs.available():
        mlflow_jobs.configure(own_gateway=forwarder is not None)

    from mlfleet.mlflow_api.hardening import MAX_REQUEST_HEAD

    app = build_app()
    config = uvicorn.Config(
        app,
        uds=args.socket,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        # What the gateway forwards (httptools, uvicorn's parser here, sets no bound; h11, its
        # fallback, would refuse heads over 16 KiB).
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
    )
    server = uvicorn.Server(config)

    jobs = mlflow_jobs.JobRunner() if runs_jobs else None

    async def serve() -> None:
        if forwarder is not None:
            await forwarder.serve()
        if jobs is not None:
            jobs.start()
        if args.handoff_fd is not None and args.generation_fd is not None:
            from mlfleet.runtime.fast_lane import Lane
            from mlfleet.runtime.handoff import Channel, Generation

            lane = Lane(
                Channel.from_fd(args.handoff_fd),
                Generation(args.generation_fd, writable=False),
                app.flask_app,
                app.is_native,
                stored_events(),
            )
            lane.start(asyncio.get_running_loop())
            try:
                await server.serve()
            finally:
                lane.flush()  # stored records the daemon has not had: before the DB may go
        else:
            await server.serve()

    # What uvicorn.run does, with the lane started on the same event loop.
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        try:
            runner.run(serve())
        finally:
            if jobs is not None:
                jobs.stop()


if __name__ == "__main__":
    main()
