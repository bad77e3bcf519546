"""The ``mlfleet`` command: start the daemon, and manage tracking servers through its API."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated, Any

import requests
import typer
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from rich.markup import escape
from rich.table import Table

from mlfleet.cli.audit import audit_app
from mlfleet.cli.backups import backup, backups, delete_backup, maintenance, restore
from mlfleet.cli.common import (
    DataDir,
    EndpointUrl,
    call,
    console,
    daemon_profile,
    daemon_session,
    err,
    follow,
    service_client,
)
from mlfleet.cli.deploy import deploy
from mlfleet.cli.events import events_app
from mlfleet.cli.iam import iam_app
from mlfleet.egress.policy import allowlist
from mlfleet.fleet.stores import ArtifactRoots
from mlfleet.settings import DEFAULT_PORT, load_settings

app = typer.Typer(help="Self-hosted managed MLflow with SageMaker's API.", no_args_is_help=True)
app.add_typer(
    iam_app,
    name="iam",
    help="Users, groups, access keys and policies (IAM and STS of the daemon).",
)
app.add_typer(
    audit_app,
    name="audit",
    help="The audit trail: recent calls, chain verification, CloudTrail-format export.",
)
app.add_typer(
    events_app, name="events", help="Event deliveries: the dead-letter store and redrive."
)
app.command()(deploy)
app.command()(backup)
app.command()(backups)
app.command()(restore)
app.command("delete-backup")(delete_backup)
app.command()(maintenance)

Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the status until it settles.")]


@app.command()
def up(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help=f"Port (default {DEFAULT_PORT}).")] = None,
    region: Annotated[str | None, typer.Option(help="Region in ARNs and signatures.")] = None,
    account_id: Annotated[str | None, typer.Option(help="12-digit account id in ARNs.")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="postgresql://... for the control plane and servers' metadata DBs."),
    ] = None,
    s3_endpoint_url: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint for s3:// artifact stores.")
    ] = None,
    public_url: Annotated[
        str | None, typer.Option(help="URL clients use to reach this daemon.")
    ] = None,
    backup_location: Annotated[
        str | None,
        typer.Option(help="s3://bucket[/prefix] to keep backups in (default DATA_DIR/backups)."),
    ] = None,
    idle_timeout: Annotated[
        str | None,
        typer.Option(
            help="Put a tracking server to sleep after this long without a request (30s, 15m, "
            "2h) unless its tag mlfleet:idle-timeout says otherwise; its next request wakes it. "
            "Default: never."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Settings file (default DATA_DIR/mlfleet.toml).")
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="Serve HTTPS with this certificate (PEM, chain after it); with --tls-key. "
            "Without one, a daemon listening beyond loopback makes its own."
        ),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="The private key of --tls-cert (PEM).")
    ] = None,
    artifact_root: Annotated[
        list[Path] | None,
        typer.Option(
            help="Folder that file: artifact stores may live under, repeatable "
            "(default DATA_DIR/artifacts)."
        ),
    ] = None,
    egress_allow: Annotated[
        list[str] | None,
        typer.Option(
            help="Where tracking servers may connect out besides the built-in LLM provider "
            "hosts, repeatable: a host name (* wildcards; public addresses only) or an address "
            "or network (any kind), each with an optional :port.",
        ),
    ] = None,
    allow_unconfined_model_code: Annotated[
        bool | None,
        typer.Option(
            "--allow-unconfined-model-code",
            help="Where bubblewrap cannot confine processes, deploy model code anyway: it then "
            "runs with the daemon's rights (its keys, databases and every tenant's data).",
        ),
    ] = None,
) -> None:
    """Start the mlfleet daemon in the foreground."""
    from mlfleet.daemon.app import run
    from mlfleet.daemon.tls import TlsError

    try:
        settings = load_settings(
            {
                "data_dir": data_dir,
                "host": host,
                "port": port,
                "region": region,
                "account_id": account_id,
                "database_url": database_url,
                "s3_endpoint_url": s3_endpoint_url,
                "public_url": public_url,
                "backup_location": backup_location,
                "idle_timeout": idle_timeout,
                "tls_cert": tls_cert,
                "tls_key": tls_key,
                "artifact_roots": tuple(artifact_root) if artifact_root else None,
                "allow_unconfined_model_code": allow_unconfined_model_code,
                "egress_allow": tuple(egress_allow) if egress_allow else None,
            },
            config_file=config,
        )
        # The fleet refuses an unsafe root too; checked here, it is a message, not a traceback.
        ArtifactRoots.of(settings)
        allowlist(settings.egress_allow)
    except (ValueError, TypeError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    try:
        run(settings)
    except TlsError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc


# client side ---------------------------------------------------------------------------------


@app.command()
def create(
    name: str,
    artifact_store_uri: Annotated[
        str,
        typer.Option(
            help="s3://bucket/prefix, or file:///absolute/folder inside an artifact root of the "
            "daemon (mlfleet up --artifact-root; default DATA_DIR/artifacts)."
        ),
    ],
    size: Annotated[str, typer.Option(help="Small, Medium or Large.")] = "Small",
    mlflow_version: Annotated[
        str | None,
        typer.Option(
            help="An MLflow release (3.17.2) or line (3.16, 2.22, 3: its newest release), "
            "2.10 or later; default: the one installed beside mlfleet."
        ),
    ] = None,
    role_arn: Annotated[
        str | None, typer.Option(help="Role the server acts as (default: arn:…:role/mlfleet).")
    ] = None,
    automatic_model_registration: bool = False,
    weekly_maintenance_window_start: Annotated[
        str | None, typer.Option(help="e.g. Tue:03:30")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="key=value, repeatable.")] = None,
    wait: Wait = True,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Create a tracking server."""
    client = service_client(data_dir, endpoint_url)
    params: dict[str, Any] = {
        "TrackingServerName": name,
        "ArtifactStoreUri": artifact_store_uri,
        "TrackingServerSize": size,
        "RoleArn": role_arn or _default_role(data_dir),
        "AutomaticModelRegistration": automatic_model_registration,
    }
    if weekly_maintenance_window_start:
        params["WeeklyMaintenanceWindowStart"] = weekly_maintenance_window_start
    if mlflow_version:
        params["MlflowVersion"] = mlflow_version
    if tag:
        params["Tags"] = [dict(zip(("Key", "Value"), t.split("=", 1), strict=False)) for t in tag]
    arn = call(client, "create_mlflow_tracking_server", **params)["TrackingServerArn"]
    console.print(arn)
    if wait:
        follow(client, name)


def _default_role(data_dir: Path | None) -> str:
    account = load_settings({"data_dir": data_dir}).account_id
    return f"arn:aws:iam::{account}:role/mlfleet"


@app.command()
def describe(name: str, data_dir: DataDir = None, endpoint_url: EndpointUrl = None) -> None:
    """Show one tracking server."""
    desc = call(
        service_client(data_dir, endpoint_url),
        "describe_mlflow_tracking_server",
        TrackingServerName=name,
    )
    table = Table(show_header=False, box=None)
    for key, value in desc.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command("list")
def list_servers(data_dir: DataDir = None, endpoint_url: EndpointUrl = None) -> None:
    """List tracking servers."""
    client = service_client(data_dir, endpoint_url)
    table = Table("name", "status", "active", "mlflow", "created")
    params: dict[str, Any] = {}
    while True:
        page = call(client, "list_mlflow_tracking_servers", **params)
        for s in page["TrackingServerSummaries"]:
            table.add_row(
                s["TrackingServerName"],
                s["TrackingServerStatus"],
                s["IsActive"],
                s["MlflowVersion"],
                s["CreationTime"].strftime("%Y-%m-%d %H:%M:%S"),
            )
        if "NextToken" not in page:
            break
        params["NextToken"] = page["NextToken"]
    console.print(table)


@app.command()
def start(
    name: str, wait: Wait = True, data_dir: DataDir = None, endpoint_url: EndpointUrl = None
) -> None:
    """Start a stopped tracking server."""
    client = service_client(data_dir, endpoint_url)
    call(client, "start_mlflow_tracking_server", TrackingServerName=name)
    if wait:
        follow(client, name)


@app.command()
def stop(
    name: str, wait: Wait = True, data_dir: DataDir = None, endpoint_url: EndpointUrl = None
) -> None:
    """Stop a tracking server (its data stays)."""
    client = service_client(data_dir, endpoint_url)
    call(client, "stop_mlflow_tracking_server", TrackingServerName=name)
    if wait:
        follow(client, name)


@app.command()
def update(
    name: str,
    size: Annotated[str | None, typer.Option(help="Small, Medium or Large.")] = None,
    artifact_store_uri: str | None = None,
    automatic_model_registration: Annotated[
        bool | None,
        typer.Option("--automatic-model-registration/--no-automatic-model-registration"),
    ] = None,
    weekly_maintenance_window_start: str | None = None,
    mlflow_version: Annotated[
        str | None,
        typer.Option(
            help="Move the server to this MLflow release or line in place (mlfleet's "
            "UpdateTrackingServerMlflowVersion): backup, migration, probe; rolled back on "
            "failure."
        ),
    ] = None,
    wait: Wait = True,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Change a tracking server's settings, or the MLflow release it runs."""
    client = service_client(data_dir, endpoint_url)
    params: dict[str, Any] = {"TrackingServerName": name}
    for key, value in (
        ("TrackingServerSize", size),
        ("ArtifactStoreUri", artifact_store_uri),
        ("AutomaticModelRegistration", automatic_model_registration),
        ("WeeklyMaintenanceWindowStart", weekly_maintenance_window_start),
    ):
        if value is not None:
            params[key] = value
    if mlflow_version is None or len(params) > 1:
        call(client, "update_mlflow_tracking_server", **params)
        if wait or mlflow_version:
            follow(client, name)
    if mlflow_version:
        call(
            service_client(data_dir, endpoint_url, "mlfleet"),
            "update_tracking_server_mlflow_version",
            TrackingServerName=name,
            MlflowVersion=mlflow_version,
        )
        if wait:
            follow(client, name)


@app.command()
def delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    wait: Wait = True,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Delete a tracking server and its metadata database (artifacts stay in the store)."""
    if not yes:
        typer.confirm(f"Delete tracking server {name} and its metadata database?", abort=True)
    client = service_client(data_dir, endpoint_url)
    call(client, "delete_mlflow_tracking_server", TrackingServerName=name)
    if wait:
        follow(client, name, gone_ok=True)


@app.command()
def ui(
    name: str,
    open_browser: Annotated[bool, typer.Option("--open", help="Open it in a browser.")] = False,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Print a single-use URL that opens the MLflow UI of a tracking server."""
    url = call(
        service_client(data_dir, endpoint_url),
        "create_presigned_mlflow_tracking_server_url",
        TrackingServerName=name,
    )["AuthorizedUrl"]
    console.print(url, soft_wrap=True)
    if open_browser:
        webbrowser.open(url)


@app.command("console")
def console_link(
    open_browser: Annotated[bool, typer.Option("--open", help="Open it in a browser.")] = False,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Print a one-time link that signs a browser in to the web console (valid 5 minutes)."""
    session, endpoint = daemon_session(data_dir, endpoint_url)
    credentials = session.get_credentials()
    if credentials is None:
        err.print("[red]No credentials[/red]: run `mlfleet up` first, or set AWS_ACCESS_KEY_ID.")
        raise typer.Exit(1)
    # The daemon gives a link to whoever signs this request, for that caller's own key.
    request = AWSRequest(method="POST", url=f"{endpoint.rstrip('/')}/console/links", data=b"")
    SigV4Auth(credentials, "sagemaker", session.region_name or "us-east-1").add_auth(request)
    try:
        answer = requests.post(
            request.url,
            headers=dict(request.headers),
            data=b"",
            timeout=30,
            verify=daemon_profile(data_dir).get("ca_bundle") or True,
        )
    except requests.ConnectionError:
        err.print(f"[red]Cannot reach mlfleet at {endpoint}[/red]: is `mlfleet up` running?")
        raise typer.Exit(1) from None
    if answer.status_code != 200:
        try:
            refusal = answer.json()
        except ValueError:
            refusal = {}
        code = refusal.get("__type", answer.status_code)
        err.print(f"[red]{code}[/red]: {escape(refusal.get('Message', answer.text))}")
        raise typer.Exit(1)
    url = f"{endpoint.rstrip('/')}{answer.json()['SignInUrl']}"
    console.print(url, soft_wrap=True)
    if open_browser:
        webbrowser.open(url)


if __name__ == "__main__":
    app()
