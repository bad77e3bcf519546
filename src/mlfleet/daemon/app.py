"""The mlfleet daemon: one aiohttp server on one port, wired explicitly from its parts."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from markupsafe import Markup
from sqlalchemy import select

from mlfleet.api.endpoint import Endpoint
from mlfleet.api.pipeline import ApiCall, Pipeline
from mlfleet.apps.service import Apps
from mlfleet.audit.responses import cloudtrail_endpoint
from mlfleet.audit.trail import AuditTrail, open_trail
from mlfleet.auth.credentials import ADMIN_USER, Credentials
from mlfleet.auth.secrets import SecretBox
from mlfleet.auth.ui_sessions import UiSessions
from mlfleet.backups.responses import mlfleet_endpoint
from mlfleet.backups.schedule import DailyBackups
from mlfleet.backups.service import Backups
from mlfleet.backups.shelves import check_location
from mlfleet.common.durations import parse_duration
from mlfleet.console.app import PREFIX as CONSOLE_PREFIX
from mlfleet.console.app import Console
from mlfleet.console.charts import endpoint_charts, server_charts
from mlfleet.console.pages import ALL_PAGES as CONSOLE_PAGES
from mlfleet.console.sessions import ConsoleSessions
from mlfleet.daemon.control_plane import ControlPlane
from mlfleet.daemon.operations import (
    BACKUPS,
    DEPLOYMENT,
    MLFLOW_APPS,
    MODEL_REGISTRY,
    SAGEMAKER_ACTIONS,
    TRACKING_SERVERS,
)
from mlfleet.daemon.private import make_private
from mlfleet.daemon.tls import refuse_secrets_in_clear, serve_tls
from mlfleet.deploy.deployer import Deployer
from mlfleet.deploy.responses import Invocations
from mlfleet.deploy.service import Deployments
from mlfleet.egress.policy import EgressPolicy
from mlfleet.egress.proxy import EgressProxy, EgressServer, WorkerEgress
from mlfleet.events.bus import EventBus
from mlfleet.events.dead_letters import DeliveryLog
from mlfleet.events.delivery import DeliveryWorker
from mlfleet.events.egress import OwnAddress
from mlfleet.events.responses import EventBridge, events_endpoint
from mlfleet.events.sources import api_call_event
from mlfleet.events.store import EventStore
from mlfleet.fleet.idle import IdleServers
from mlfleet.fleet.lifecycle import APP, SERVER, Lifecycle
from mlfleet.fleet.maintenance import MaintenanceWindows
from mlfleet.fleet.reconciler import Reconciler
from mlfleet.fleet.responses import sagemaker_endpoint
from mlfleet.fleet.service import FleetService
from mlfleet.fleet.stores import ArtifactRoots
from mlfleet.gateway.admission import Admission
from mlfleet.gateway.authentication import Authentication
from mlfleet.gateway.forwarding import Forwarding
from mlfleet.gateway.handover import Handover
from mlfleet.gateway.own_calls import OwnCalls
from mlfleet.gateway.proxy import Gateway
from mlfleet.gateway.recording import Recording
from mlfleet.gateway.routing import Routing, ServerRecord
from mlfleet.iam.responses import Identities, iam_api, sts_api
from mlfleet.iam.simulator import Simulator
from mlfleet.iam.store import IamStore
from mlfleet.iam.sts import SecurityTokenService
from mlfleet.metrics import Recorder
from mlfleet.mlflow_api.actions import table_mlflow_version
from mlfleet.mlflow_api.hardening import MAX_REQUEST_LINE
from mlfleet.policy.authorizer import AUTHORIZATION_MODES, Authorizer
from mlfleet.registry.service import ModelRegistry
from mlfleet.registry.sync import RegistrySync
from mlfleet.runtime.local import LocalRuntime
from mlfleet.runtime.metadata_db import MetadataDatabases
from mlfleet.runtime.sandbox import Sandbox
from mlfleet.runtime.sockets import run_dir_for
from mlfleet.runtime.warm import own_mount_namespace
from mlfleet.s3.endpoint import S3Endpoint, signed_for_s3
from mlfleet.s3.objects import STALE_UPLOAD_SECONDS, Objects, uploads_folder
from mlfleet.settings import Settings
from mlfleet.state.db import open_database
from mlfleet.state.models import TrackingServer
from mlfleet.versions.environments import Environments
from mlfleet.versions.releases import Releases

log = logging.getLogger("mlfleet")


@dataclass
class Daemon:
    settings: Settings
    runtime: LocalRuntime
    reconciler: Reconciler
    backups: Backups
    windows: MaintenanceWindows
    daily_backups: DailyBackups
    idle: IdleServers
    gateway: Gateway
    deliveries: DeliveryWorker
    control_plane: ControlPlane
    console: Console
    deployer: Deployer
    invocations: Invocations
    s3: S3Endpoint
    egress: EgressProxy
    trail: AuditTrail
    credentials_path: Path | None


def build_daemon(settings: Settings, own_mounts: bool = False) -> Daemon:
    """The daemon's parts, wired; ``own_mounts``: it has a mount namespace of its own
    (runtime.warm.own_mount_namespace), so workers may start warm."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sessions = open_database(settings.control_db_url)
    box = SecretBox.from_file(settings.master_key_path)
    credentials = Credentials(settings, sessions, box)
    if credentials.seal_plaintext_secrets():
        log.info("encrypted the access-key secrets stored before encryption at rest")
    # Caches of keys and decisions must not outlive an IAM change: the store tells them.
    on_iam_change: list[Callable[[], None]] = [credentials.forget]
    store = IamStore(
        sessions, settings.account_id, box, on_change=lambda: [f() for f in on_iam_change]
    )
    check_location(settings.backup_location)
    try:
        default_idle_timeout = parse_duration(settings.idle_timeout or "never")
    except ValueError as exc:
        raise ValueError(f"idle_timeout: {exc}") from None
    if settings.authorization not in AUTHORIZATION_MODES:
        raise ValueError(
            f"authorization = {settings.authorization!r}: expected one of {AUTHORIZATION_MODES}"
        )
    enforce = settings.authorization == "iam"
    if not enforce:
        log.warning(
            "authorization = authenticate-only: IAM policies are NOT enforced; any valid access "
            "key may do anything"
        )
    authorizer = Authorizer(store, settings.account_id, enforce)
    on_iam_change.append(authorizer.invalidate)
    store.bootstrap_admin(ADMIN_USER)
    admin_key = credentials.admin_key()
    creds_path = credentials.write_client_files(*admin_key)[0] if admin_key else None

    mlflow_version = importlib.metadata.version("mlflow")
    # Loads the route table now, so a missing one stops the daemon instead of its first request.
    if table_mlflow_version() != mlflow_version:
        log.warning(
            "the gateway's route table was generated from MLflow %s but MLflow %s is installed: "
            "routes it does not list are refused and changed ones keep their old action; "
            "regenerate it with python -m mlfleet.mlflow_api.action_table",
            table_mlflow_version(),
            mlflow_version,
        )
    sandbox = Sandbox(run_dir_for(settings.data_dir), settings.allow_unconfined_model_code)
    if not sandbox.confined:
        log.warning(
            "tracking servers and endpoints run UNCONFINED: %s; model code is %s",
            sandbox.reason,
            "allowed (--allow-unconfined-model-code)" if sandbox.allow_unconfined else "refused",
        )
    runtime = LocalRuntime(sandbox, own_mounts and settings.warm_starts)
    # Connections handed over to workers hold decisions made before the change.
    on_iam_change.append(runtime.generation.bump)
    own = OwnAddress(settings.host, settings.port)
    event_store = EventStore(sessions, settings.account_id, settings.region, box, own)
    bus = EventBus(sessions, event_store.rules_with_targets, settings.account_id, settings.region)
    deliveries = DeliveryWorker(
        sessions,
        event_store.delivery_target,
        settings.event_retry_max_backoff_seconds,
        own,
    )
    bus.set_wake(deliveries.wake)
    registry = ModelRegistry(settings, sessions, publish=bus.publish)
    trail = open_trail(settings, sessions, box)

    def record(call: ApiCall) -> None:
        # Calls that change something also reach EventBridge, as CloudTrail sends them.
        event = api_call_event(trail.record_api_call(call))
        if event is not None:
            bus.publish([event])

    pipeline = Pipeline(authorizer, record)
    # Traffic of the last hour, for the console's charts: servers by id, endpoints by name.
    server_metrics, endpoint_metrics = Recorder(), Recorder()

    def lookup(name: str) -> ServerRecord | None:
        with sessions() as session:
            row = session.execute(
                select(
                    TrackingServer.id,
                    TrackingServer.status,
                    TrackingServer.desired_state,
                    TrackingServer.tags,
                    TrackingServer.role_arn,
                    TrackingServer.automatic_model_registration,
                    TrackingServer.artifact_store_uri,
                    TrackingServer.asleep,
                    TrackingServer.arn,
                    TrackingServer.kind,
                ).where(TrackingServer.name == name)
            ).first()
        if row is None:
            return None
        return ServerRecord(
            row[0], row[1], row[2], tuple(row[3]), row[4], row[5], row[6], row[7], row[8], row[9]
        )

    # The gateway's parts, built first: the fleet and the registry sync need some of them.
    routing = Routing(settings, runtime, lookup)
    # Bound once the idle servers exist (they need the reconciler, which needs the gateway's
    # parts); called only when a request meets a sleeping server.
    admission = Admission(
        settings, runtime, lookup, server_metrics, wake=lambda sid, why: idle.wake(sid, why)
    )
    forwarding = Forwarding(runtime.sandbox.run_dir)
    registry_sync = RegistrySync(registry, OwnCalls(admission, forwarding), settings.account_id)
    handover = Handover(settings, runtime, credentials, authorizer, trail, server_metrics)
    runtime.on_channel = handover.listen
    # Raises ValueError for a root that would expose the data dir: the daemon must not start.
    stores = ArtifactRoots.of(settings)
    environments = Environments(
        settings.data_dir / "mlflow-versions",
        Releases(mlflow_version, local=lambda: environments.built()),
    )
    lifecycle = Lifecycle(
        settings, runtime.is_serving, publish=bus.publish, progress=environments.progress
    )
    egress = WorkerEgress(sandbox.run_dir / "egress" / "proxy.sock", box)
    databases = MetadataDatabases(settings, mlflow_version, environments.python, box)

    def serving(row: TrackingServer) -> None:
        registry_sync.catch_up(row)  # registrations that came due while it was away
        idle.serving(row)

    reconciler = Reconciler(
        settings,
        sessions,
        runtime,
        databases,
        environments,
        stores,
        lifecycle,
        on_serving=serving,
        record_left_over=handover.record_left_over,
        egress=egress,
        box=box,
        # Bound once the backups exist (they create servers through the fleet, which kicks
        # the reconciler); called only when a restored server is first brought up.
        restore=lambda row: backups.restore_into(row),
        back_up=lambda row, origin: backups.back_up_now(row, origin),
    )
    fleet = FleetService(
        settings,
        sessions,
        environments.releases,
        stores,
        lifecycle,
        kick=reconciler.kick,
        # The gateway authorizes on a server's tags and registers models by its settings.
        server_changed=routing.forget_server,
        idle_timeout=default_idle_timeout,
    )
    apps = Apps(
        settings,
        sessions,
        fleet,
        lifecycle,
        kick=reconciler.kick,
        server_changed=routing.forget_server,
        idle_timeout=default_idle_timeout,
    )
    idle = IdleServers(
        sessions,
        runtime,
        server_metrics,
        admission.busy,
        lifecycle,
        trail,
        reconciler.kick,
        {SERVER: default_idle_timeout, APP: apps.idle_timeout},
    )

    backups = Backups(settings, sessions, databases, fleet, sandbox.give_all)
    windows = MaintenanceWindows(sessions, fleet)
    daily_backups = DailyBackups(sessions, backups, settings.daily_backup_seconds)

    def egress_server(name: str) -> EgressServer | None:
        # Uncached: a server's egress switch is its tag as it is now.
        found = lookup(name)
        return EgressServer(found.id, fleet.arn_for(name), found.tags) if found else None

    egress_proxy = EgressProxy(
        egress.socket_path,
        EgressPolicy(settings.egress_allow, own),
        box,
        egress_server,
        trail.record_data_event,
    )
    gateway = Gateway(
        settings=settings,
        routing=routing,
        authentication=Authentication(settings, credentials, UiSessions(sessions)),
        pipeline=pipeline,
        admission=admission,
        forwarding=forwarding,
        recording=Recording(trail, bus, registry_sync, server_metrics),
        handover=handover,
    )

    def servers() -> list[tuple[str, float]]:
        with sessions() as session:
            rows = session.execute(select(TrackingServer.name, TrackingServer.created_at)).all()
        return [(name, created) for name, created in rows]

    objects = Objects(admission, forwarding, uploads_folder(settings.data_dir))
    forgotten = objects.forget_stale_uploads(STALE_UPLOAD_SECONDS)
    if forgotten:
        log.info("removed %d multipart uploads begun over a week ago", forgotten)
    s3 = S3Endpoint(
        region=settings.region,
        account_id=settings.account_id,
        credentials=credentials,
        pipeline=pipeline,
        trail=trail,
        server=routing.server,
        servers=servers,
        objects=objects,
    )

    def tracking_socket(name: str) -> Path | None:
        # An endpoint instance downloads its model from a worker of the tracking server.
        with sessions() as session:
            server_id = session.scalar(select(TrackingServer.id).where(TrackingServer.name == name))
        procs = runtime.get(server_id) if server_id else None
        healthy = [w for w in procs.workers if w.healthy] if procs else []
        if not healthy and server_id:
            idle.wake(server_id, "an endpoint fetches a model")  # nothing unless asleep
        return healthy[0].socket_path if healthy else None

    deployer = Deployer(
        sessions,
        settings.data_dir,
        sandbox,
        tracking_socket,
        announce=lambda session, name: deployments.announce(session, name),
    )
    deployments = Deployments(
        settings,
        sessions,
        registry,
        deployer.kick,
        publish=lambda events, session: bus.publish(events, session),
    )
    invocations = Invocations(
        deployments,
        deployer,
        credentials,
        pipeline,
        settings.region,
        settings.account_id,
        endpoint_metrics,
    )

    def charts_of_server(name: str) -> list[Markup]:
        found = lookup(name)
        return server_charts(server_metrics.window(found.id)) if found else []

    sts = SecurityTokenService(sessions, store, authorizer, box, settings.account_id)

    sagemaker_operations = {
        **TRACKING_SERVERS.bind(fleet),
        **MLFLOW_APPS.bind(apps),
        **MODEL_REGISTRY.bind(registry),
        **DEPLOYMENT.bind(deployments),
    }
    services: dict[str, Endpoint] = {
        "sagemaker": sagemaker_endpoint(
            sagemaker_operations, credentials, pipeline, settings.region
        ),
        "iam": iam_api(
            Identities(
                store, Simulator(store, authorizer, settings.account_id), settings.account_id
            ),
            credentials,
            pipeline,
        ),
        "sts": sts_api(
            sts,
            credentials,
            pipeline,
            settings.region,
            settings.sts_min_duration_seconds,
        ),
        "cloudtrail": cloudtrail_endpoint(trail, credentials, pipeline, settings.region),
        "events": events_endpoint(
            EventBridge(event_store, bus.put_events), credentials, pipeline, settings.region
        ),
        "mlfleet": mlfleet_endpoint(BACKUPS.bind(backups), credentials, pipeline, settings.region),
    }
    console = Console(
        ConsoleSessions(sessions, credentials),
        credentials,
        services,
        context={
            "sagemaker_actions": SAGEMAKER_ACTIONS,
            "default_role_arn": f"arn:aws:iam::{settings.account_id}:role/mlfleet",
            "server_charts": charts_of_server,
            "app_arn": apps.arn_for,
            "endpoint_charts": lambda name: endpoint_charts(endpoint_metrics.window(name)),
            # Not API operations: the outbox and dead letters, and InvokeEndpoint (runtime).
            "deliveries": DeliveryLog(sessions, event_store, pipeline),
            "invocations": invocations,
        },
    )
    return Daemon(
        settings=settings,
        runtime=runtime,
        reconciler=reconciler,
        backups=backups,
        windows=windows,
        daily_backups=daily_backups,
        idle=idle,
        gateway=gateway,
        deliveries=deliveries,
        control_plane=ControlPlane(services),
        console=console,
        deployer=deployer,
        invocations=invocations,
        s3=s3,
        egress=egress_proxy,
        trail=trail,
        credentials_path=creds_path,
    )


def build_app(daemon: Daemon) -> web.Application:
    @web.middleware
    async def s3_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        # S3 is addressed by path (/<bucket>/<key>) on the same port: its signature's scope,
        # not its path, says a request is for it. S3 has no POST /: a control-plane call signed
        # for the wrong service is the control plane's to refuse.
        if signed_for_s3(request) and not (request.method == "POST" and request.path == "/"):
            return await daemon.s3.handle(request)
        return await handler(request)

    # Bodies read whole (control plane, MLflow API calls) are capped by the setting; artifact
    # transfers are streamed and not read whole.
    app = web.Application(
        client_max_size=daemon.settings.max_api_body_bytes,
        middlewares=[refuse_secrets_in_clear, s3_requests],
    )
    sandbox, warm = daemon.runtime.sandbox, daemon.runtime.warm

    async def health(_request: web.Request) -> web.Response:
        starts = {"warm": True} if warm.enabled else {"warm": False, "reason": warm.reason}
        return web.json_response(
            {"status": "ok", "sandbox": sandbox.describe(), "workerStarts": starts}
        )

    app.router.add_get("/health", health)
    app.router.add_post("/", daemon.control_plane.handle)
    # sagemaker-runtime's InvokeEndpoint (REST-JSON), on the same port as everything else.
    app.router.add_post("/endpoints/{name}/invocations", daemon.invocations.handle)
    app.add_subapp(CONSOLE_PREFIX, daemon.console.build(CONSOLE_PAGES))
    app.router.add_route("*", "/mlflow/{name}", daemon.gateway.by_path)
    app.router.add_route("*", "/mlflow/{name}/{tail:.*}", daemon.gateway.by_path)
    for prefix in ("/api", "/ajax-api"):
        app.router.add_route("*", prefix + "/{tail:.*}", daemon.gateway.by_arn_header)

    background: list[asyncio.Task[None]] = []

    async def on_startup(_app: web.Application) -> None:
        await daemon.egress.start()
        await daemon.gateway.start()
        await daemon.deliveries.start()
        daemon.backups.resume()
        daemon.reconciler.resume_all()
        daemon.deployer.resume_all()
        for loop in (daemon.windows.run(), daemon.daily_backups.run(), daemon.idle.run()):
            background.append(asyncio.get_running_loop().create_task(loop))

    # aiohttp runs this on SIGTERM once no new connection is taken and the requests in flight
    # have finished (or shutdown_timeout passed).
    async def on_cleanup(_app: web.Application) -> None:
        for task in background:
            task.cancel()
        await daemon.deployer.close()
        await daemon.backups.close()
        await daemon.reconciler.close()
        await daemon.runtime.close()
        await daemon.reconciler.record_all_left_over()
        # Records the workers sent last may still wait in the trail's writer thread.
        await asyncio.to_thread(daemon.trail.drain)
        await daemon.gateway.close()
        await daemon.deliveries.close()
        await daemon.egress.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


class RefusedRequestsInOneLine(logging.Filter):
    """aiohttp logs a request its parser refused (a line over MAX_REQUEST_LINE, a malformed
    head) as an error with a traceback, as if the daemon had failed: it is the client's doing,
    logged as one warning. The parser's message is left out: it quotes the start of the line,
    which may be an Authorization header."""

    def filter(self, record: logging.LogRecord) -> bool:
        refused = record.exc_info[1] if record.exc_info else None
        if isinstance(refused, HttpProcessingError) and isinstance(record.args, tuple):
            record.msg = f"{record.msg}: %s"
            record.args = (*record.args, type(refused).__name__)
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


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
    logging.getLogger("aiohttp.server").addFilter(RefusedRequestsInOneLine())


def run(settings: Settings, banner: bool = True) -> None:
    # First, while this process has one thread (a mount namespace is per thread).
    own_mounts = own_mount_namespace()
    tightened = make_private(settings.data_dir)
    configure_logging(settings)
    if tightened:
        log.info("made %d entries of the data dir owner-only (it was open to others)", tightened)
    # Before the daemon writes the AWS config file, which names the CA of a certificate it made.
    tls = serve_tls(settings)
    if tls:
        log.info("serving HTTPS, certificate SHA-256 fingerprint %s", tls.fingerprint)
    daemon = build_daemon(settings, own_mounts)
    if banner:
        print(
            f"mlfleet is up\n"
            f"  endpoint:    {settings.endpoint_url}\n"
            f"  region:      {settings.region}\n"
            f"  account id:  {settings.account_id}\n"
            f"  credentials: {daemon.credentials_path or 'the admin user has no access key'}"
            " (profile default)\n"
            f"  console:     {settings.endpoint_url}/console (`mlfleet console` prints a sign-in"
            " link)\n"
            f"  sandbox:     {daemon.runtime.sandbox.summary()}\n"
            f"{tls.banner() if tls else ''}"
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
        ssl_context=tls.context if tls else None,
        # Beyond these, aiohttp answers 400 text/plain itself: it has no hook for the answer to
        # a request it could not parse (aio-libs/aiohttp#3287), so no MLflow-shaped one.
        max_line_size=MAX_REQUEST_LINE,
        max_field_size=MAX_REQUEST_LINE,
    )
