"""The ``mlfleet`` command: start the daemon, and manage tracking servers through its API."""

from __future__ import annotations

import configparser
import json
import os
import time
import webbrowser
from pathlib import Path
from typing import Annotated, Any

import boto3
import typer
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from rich.console import Console
from rich.table import Table

from mlfleet.settings import DEFAULT_PORT, Settings, load_settings

app = typer.Typer(help="Self-hosted managed MLflow with SageMaker's API.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

TRANSITIONAL = {"Creating", "Updating", "Deleting", "Stopping", "Starting", "MaintenanceInProgress"}

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", envvar="MLFLEET_DATA_DIR", help="Where mlfleet keeps its state (~/.mlfleet)."
    ),
]
EndpointUrl = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url",
        envvar="MLFLEET_ENDPOINT_URL",
        help="Daemon URL (default: from DATA_DIR/config, else http://127.0.0.1:8470).",
    ),
]
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
    config: Annotated[
        Path | None, typer.Option(help="Settings file (default DATA_DIR/mlfleet.toml).")
    ] = None,
) -> None:
    """Start the mlfleet daemon in the foreground."""
    from mlfleet.daemon.app import run

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
            },
            config_file=config,
        )
    except (ValueError, TypeError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    run(settings)


# client side ---------------------------------------------------------------------------------


def _client(data_dir: Path | None, endpoint_url: str | None) -> BaseClient:
    """A boto3 SageMaker client for the daemon, from the data dir's files when they exist."""
    folder = (data_dir or Settings().data_dir).expanduser()
    profile: dict[str, str] = {}
    for name in ("credentials", "config"):
        parser = configparser.ConfigParser()
        parser.read(folder / name)
        if parser.has_section("default"):
            profile.update(parser["default"])
    endpoint = endpoint_url or profile.get("endpoint_url") or f"http://127.0.0.1:{DEFAULT_PORT}"
    session = boto3.Session(
        aws_access_key_id=profile.get("aws_access_key_id") or os.environ.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=profile.get("aws_secret_access_key")
        or os.environ.get("AWS_SECRET_ACCESS_KEY"),
        region_name=profile.get("region") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    client = session.client("sagemaker", endpoint_url=endpoint)
    # FailureReason is an mlfleet extension that boto3's parser drops: keep it from the raw body.
    client.meta.events.register("after-call.sagemaker.DescribeMlflowTrackingServer", _keep_extras)
    return client


def _keep_extras(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
    try:
        raw = json.loads(http_response.content or b"{}")
    except ValueError:
        return
    if "FailureReason" in raw:
        parsed["FailureReason"] = raw["FailureReason"]


def _call(client: BaseClient, operation: str, **params: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = getattr(client, operation)(**params)
    except EndpointConnectionError as exc:
        err.print(
            f"[red]error:[/red] cannot reach mlfleet at {client.meta.endpoint_url}: "
            "is `mlfleet up` running?"
        )
        raise typer.Exit(1) from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        err.print(f"[red]error:[/red] {error.get('Code')}: {error.get('Message')}")
        raise typer.Exit(1) from exc
    except BotoCoreError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    result.pop("ResponseMetadata", None)
    return result


def _follow(client: BaseClient, name: str, gone_ok: bool = False) -> None:
    """Show the status while it settles; exit non-zero on a …Failed status."""
    last = None
    with console.status(f"{name}: waiting") as spinner:
        while True:
            try:
                desc = client.describe_mlflow_tracking_server(TrackingServerName=name)
            except ClientError as exc:
                if gone_ok and exc.response["Error"]["Code"] == "ResourceNotFound":
                    console.print(f"{name}: deleted")
                    return
                raise
            status = desc["TrackingServerStatus"]
            if status != last:
                spinner.update(f"{name}: {status}")
                last = status
            if status not in TRANSITIONAL:
                break
            time.sleep(0.5)
    if status.endswith("Failed"):
        err.print(
            f"[red]{name}: {status}[/red]: {desc.get('FailureReason') or 'no reason recorded'}"
        )
        raise typer.Exit(1)
    console.print(
        f"{name}: [green]{status}[/green] ({desc['IsActive']}) {desc['TrackingServerUrl']}"
    )


@app.command()
def create(
    name: str,
    artifact_store_uri: Annotated[
        str, typer.Option(help="s3://bucket/prefix, or file:///absolute/folder.")
    ],
    size: Annotated[str, typer.Option(help="Small, Medium or Large.")] = "Small",
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
    client = _client(data_dir, endpoint_url)
    params: dict[str, Any] = {
        "TrackingServerName": name,
        "ArtifactStoreUri": artifact_store_uri,
        "TrackingServerSize": size,
        "RoleArn": role_arn or _default_role(data_dir),
        "AutomaticModelRegistration": automatic_model_registration,
    }
    if weekly_maintenance_window_start:
        params["WeeklyMaintenanceWindowStart"] = weekly_maintenance_window_start
    if tag:
        params["Tags"] = [dict(zip(("Key", "Value"), t.split("=", 1), strict=False)) for t in tag]
    arn = _call(client, "create_mlflow_tracking_server", **params)["TrackingServerArn"]
    console.print(arn)
    if wait:
        _follow(client, name)


def _default_role(data_dir: Path | None) -> str:
    account = load_settings({"data_dir": data_dir}).account_id
    return f"arn:aws:iam::{account}:role/mlfleet"


@app.command()
def describe(name: str, data_dir: DataDir = None, endpoint_url: EndpointUrl = None) -> None:
    """Show one tracking server."""
    desc = _call(
        _client(data_dir, endpoint_url), "describe_mlflow_tracking_server", TrackingServerName=name
    )
    table = Table(show_header=False, box=None)
    for key, value in desc.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command("list")
def list_servers(data_dir: DataDir = None, endpoint_url: EndpointUrl = None) -> None:
    """List tracking servers."""
    client = _client(data_dir, endpoint_url)
    table = Table("name", "status", "active", "mlflow", "created")
    params: dict[str, Any] = {}
    while True:
        page = _call(client, "list_mlflow_tracking_servers", **params)
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
    client = _client(data_dir, endpoint_url)
    _call(client, "start_mlflow_tracking_server", TrackingServerName=name)
    if wait:
        _follow(client, name)


@app.command()
def stop(
    name: str, wait: Wait = True, data_dir: DataDir = None, endpoint_url: EndpointUrl = None
) -> None:
    """Stop a tracking server (its data stays)."""
    client = _client(data_dir, endpoint_url)
    _call(client, "stop_mlflow_tracking_server", TrackingServerName=name)
    if wait:
        _follow(client, name)


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
    wait: Wait = True,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Change a tracking server's settings."""
    client = _client(data_dir, endpoint_url)
    params: dict[str, Any] = {"TrackingServerName": name}
    for key, value in (
        ("TrackingServerSize", size),
        ("ArtifactStoreUri", artifact_store_uri),
        ("AutomaticModelRegistration", automatic_model_registration),
        ("WeeklyMaintenanceWindowStart", weekly_maintenance_window_start),
    ):
        if value is not None:
            params[key] = value
    _call(client, "update_mlflow_tracking_server", **params)
    if wait:
        _follow(client, name)


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
    client = _client(data_dir, endpoint_url)
    _call(client, "delete_mlflow_tracking_server", TrackingServerName=name)
    if wait:
        _follow(client, name, gone_ok=True)


@app.command()
def ui(
    name: str,
    open_browser: Annotated[bool, typer.Option("--open", help="Open it in a browser.")] = False,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Print a single-use URL that opens the MLflow UI of a tracking server."""
    url = _call(
        _client(data_dir, endpoint_url),
        "create_presigned_mlflow_tracking_server_url",
        TrackingServerName=name,
    )["AuthorizedUrl"]
    console.print(url, soft_wrap=True)
    if open_browser:
        webbrowser.open(url)


if __name__ == "__main__":
    app()
