"""The mlfleet daemon: one aiohttp server on one port, wired explicitly from its parts."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from sqlalchemy import select

from mlfleet.auth.credentials import Credentials
from mlfleet.auth.ui_sessions import UiSessions
from mlfleet.fleet.reconciler import Reconciler
from mlfleet.fleet.responses import SageMakerApi
from mlfleet.fleet.service import FleetService
from mlfleet.gateway.actions import table_mlflow_version
from mlfleet.gateway.proxy import Gateway
from mlfleet.runtime.local import LocalRuntime
from mlfleet.runtime.metadata_db import MetadataDatabases
from mlfleet.settings import Settings
from mlfleet.state.db import open_database
from mlfleet.state.models import TrackingServer

log = logging.getLogger("mlfleet")


@dataclass
class Daemon:
    runtime: LocalRuntime
    reconciler: Reconciler
    gateway: Gateway
    api: SageMakerApi
    credentials_path: Path


def build_daemon(settings: Settings) -> Daemon:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sessions = open_database(settings.control_db_url)
    credentials = Credentials(settings, sessions)
    credentials.bootstrap_admin()
    creds_path, _ = credentials.write_client_files(*credentials.admin_key())

    mlflow_version = importlib.metadata.version("mlflow")
    # Loads the route table now, so a missing one stops the daemon instead of its first request.
    if table_mlflow_version() != mlflow_version:
        log.warning(
            "the gateway's route table was generated from MLflow %s but MLflow %s is installed: "
            "routes it does not list are refused and changed ones keep their old action; "
            "regenerate it with python -m mlfleet.gateway.action_table",
            table_mlflow_version(),
            mlflow_version,
        )
    reconciler_ref: list[Reconciler] = []
    runtime = LocalRuntime()
    fleet = FleetService(
        settings,
        sessions,
        mlflow_version,
        is_serving=runtime.is_serving,
        kick=lambda server_id: reconciler_ref[0].kick(server_id),
    )
    reconciler = Reconciler(
        settings, sessions, runtime, MetadataDatabases(settings, mlflow_version), fleet
    )
    reconciler_ref.append(reconciler)

    def lookup(name: str) -> tuple[str, str, str] | None:
        with sessions() as session:
            row = session.execute(
                select(
                    TrackingServer.id, TrackingServer.status, TrackingServer.desired_state
                ).where(TrackingServer.name == name)
            ).first()
        return None if row is None else (row[0], row[1], row[2])

    gateway = Gateway(settings, runtime, credentials, UiSessions(sessions), lookup)
    return Daemon(
        runtime=runtime,
        reconciler=reconciler,
        gateway=gateway,
        api=SageMakerApi(fleet, credentials),
        credentials_path=creds_path,
    )


async def _health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(daemon: Daemon) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/health", _health)
    app.router.add_post("/", daemon.api.handle)
    app.router.add_route("*", "/mlflow/{name}", daemon.gateway.by_path)
    app.router.add_route("*", "/mlflow/{name}/{tail:.*}", daemon.gateway.by_path)
    for prefix in ("/api", "/ajax-api"):
        app.router.add_route("*", prefix + "/{tail:.*}", daemon.gateway.by_arn_header)

    async def on_startup(_app: web.Application) -> None:
        await daemon.gateway.start()
        daemon.reconciler.resume_all()

    async def on_cleanup(_app: web.Application) -> None:
        await daemon.reconciler.close()
        await daemon.runtime.close()
        await daemon.gateway.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def configure_logging(settings: Settings) -> None:
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stderr),
        logging.FileHandler(settings.data_dir / "mlfleet.log"),
    ]
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run(settings: Settings, banner: bool = True) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(settings)
    daemon = build_daemon(settings)
    if banner:
        print(
            f"mlfleet is up\n"
            f"  endpoint:    {settings.endpoint_url}\n"
            f"  region:      {settings.region}\n"
            f"  account id:  {settings.account_id}\n"
            f"  credentials: {daemon.credentials_path} (profile default)\n"
            f"  try:         AWS_CONFIG_FILE={settings.data_dir / 'config'} "
            f"AWS_SHARED_CREDENTIALS_FILE={daemon.credentials_path} "
            f"aws sagemaker list-mlflow-tracking-servers",
            flush=True,
        )
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(
        build_app(daemon),
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        handle_signals=True,
        shutdown_timeout=15,
    )
