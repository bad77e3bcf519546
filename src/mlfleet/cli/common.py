"""What every client-side ``mlfleet`` command shares: options, consoles, boto3 clients, errors."""

from __future__ import annotations

import configparser
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import boto3
import botocore.session
import typer
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from rich.console import Console
from rich.markup import escape

from mlfleet.protocol.awsjson import with_mlfleet_models
from mlfleet.settings import DEFAULT_PORT, Settings

TRANSITIONAL = {"Creating", "Updating", "Deleting", "Stopping", "Starting", "MaintenanceInProgress"}

console = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", envvar="MLFLEET_DATA_DIR", help="Where mlfleet keeps its state (~/.mlfleet)."
    ),
]
# Commands that open the daemon's database themselves (offline) need it as the daemon was given
# it: with only the data dir they would read the embedded SQLite database.
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="MLFLEET_DATABASE_URL",
        help="The daemon's --database-url (postgresql://...), if it was given one.",
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


def daemon_profile(data_dir: Path | None) -> dict[str, str]:
    """The default profile of the data dir's ``credentials`` and ``config`` files, if any."""
    folder = (data_dir or Settings().data_dir).expanduser()
    profile: dict[str, str] = {}
    for name in ("credentials", "config"):
        parser = configparser.ConfigParser()
        parser.read(folder / name)
        if parser.has_section("default"):
            profile.update(parser["default"])
    return profile


def daemon_session(
    data_dir: Path | None, endpoint_url: str | None, region: str | None = None
) -> tuple[boto3.Session, str]:
    """A boto3 session with the data dir's credentials (else the environment's), and the URL."""
    profile = daemon_profile(data_dir)
    endpoint = endpoint_url or profile.get("endpoint_url") or f"http://127.0.0.1:{DEFAULT_PORT}"
    core = with_mlfleet_models(botocore.session.get_session())
    if profile.get("ca_bundle"):
        # The CA of the certificate a daemon made, as the AWS CLI reads it from the same file.
        core.set_config_variable("ca_bundle", profile["ca_bundle"])
    session = boto3.Session(
        botocore_session=core,
        aws_access_key_id=profile.get("aws_access_key_id") or os.environ.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=profile.get("aws_secret_access_key")
        or os.environ.get("AWS_SECRET_ACCESS_KEY"),
        region_name=region
        or profile.get("region")
        or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    return session, endpoint


def service_client(
    data_dir: Path | None,
    endpoint_url: str | None,
    service: str = "sagemaker",
    region: str | None = None,
) -> BaseClient:
    """A boto3 client of `service` for the daemon, from the data dir's files when they exist.

    `region` overrides the configured one (IAM is global: always signed for us-east-1).
    """
    session, endpoint = daemon_session(data_dir, endpoint_url, region)
    client = session.client(service, endpoint_url=endpoint)
    if service == "sagemaker":
        # mlfleet's extensions (FailureReason, StatusMessage, RestoreReport), which boto3's
        # parser drops: kept
        # from the body.
        client.meta.events.register(
            "after-call.sagemaker.DescribeMlflowTrackingServer", _keep_extras
        )
    return client


def _keep_extras(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
    try:
        raw = json.loads(http_response.content or b"{}")
    except ValueError:
        return
    for extension in ("FailureReason", "StatusMessage", "RestoreReport"):
        if extension in raw:
            parsed[extension] = raw[extension]


def call(
    client: BaseClient,
    operation: str,
    hints: Mapping[str, str] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Run one API operation; on failure print a one-line error (plus any hint for its code)."""
    try:
        result: dict[str, Any] = getattr(client, operation)(**params)
    except EndpointConnectionError as exc:
        err.print(
            f"[red]error:[/red] cannot reach mlfleet at {client.meta.endpoint_url}: "
            "is `mlfleet up` running?",
            soft_wrap=True,
        )
        raise typer.Exit(1) from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        text = f"{error.get('Code')}: {error.get('Message')}"
        err.print(f"[red]error:[/red] {escape(text)}", soft_wrap=True)
        hint = (hints or {}).get(str(error.get("Code")))
        if hint:
            err.print(hint, soft_wrap=True)
        raise typer.Exit(1) from exc
    except BotoCoreError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from exc
    result.pop("ResponseMetadata", None)
    return result


def follow(client: BaseClient, name: str, gone_ok: bool = False) -> None:
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
            # "Creating: installing MLflow 2.22.5 …" while its release is installed.
            shown = ": ".join(filter(None, (status, desc.get("StatusMessage"))))
            if shown != last:
                spinner.update(f"{name}: {shown}")
                last = shown
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
