"""``mlfleet deploy``: CreateModel + CreateEndpointConfig + CreateEndpoint (or UpdateEndpoint of
an endpoint that exists) in one command, following the endpoint until it serves."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import typer
from botocore.client import BaseClient

from mlfleet.cli.common import DataDir, EndpointUrl, call, console, err, service_client
from mlfleet.deploy.service import ALLOW_UNAPPROVED_TAG, TRACKING_SERVER_ENV

SETTLING = {"Creating", "Updating"}


def deploy(
    source: Annotated[
        str, typer.Argument(help="A model package ARN, or an MLflow model URI models:/NAME/VER.")
    ],
    endpoint: Annotated[str, typer.Option("--endpoint", help="The endpoint to create or update.")],
    tracking_server: Annotated[
        str | None,
        typer.Option(help="The tracking server holding a models:/ URI (not for a package)."),
    ] = None,
    instance_count: Annotated[int, typer.Option(min=1)] = 1,
    instance_type: str = "ml.m5.large",
    allow_unapproved: Annotated[
        bool, typer.Option(help="Deploy a package that is not Approved.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the status.")] = True,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Deploy a model to an endpoint (an existing endpoint is switched over without downtime)."""
    client = service_client(data_dir, endpoint_url)
    if source.startswith("models:/"):
        if tracking_server is None:
            err.print("[red]error:[/red] a models:/ URI needs --tracking-server NAME")
            raise typer.Exit(2)
        container: dict[str, Any] = {
            "ModelDataUrl": source,
            "Environment": {TRACKING_SERVER_ENV: tracking_server},
        }
    else:
        container = {"ModelPackageName": source}
    # One name for the model and the config of this deployment: unique, within 63 characters.
    name = f"{endpoint[:54]}-{uuid.uuid4().hex[:8]}"
    tags = [{"Key": ALLOW_UNAPPROVED_TAG, "Value": "true"}] if allow_unapproved else []
    call(client, "create_model", ModelName=name, PrimaryContainer=container, Tags=tags)
    call(
        client,
        "create_endpoint_config",
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InitialInstanceCount": instance_count,
                "InitialVariantWeight": 1.0,
                "InstanceType": instance_type,
            }
        ],
    )
    existing = call(client, "list_endpoints", NameContains=endpoint)["Endpoints"]
    if any(e["EndpointName"] == endpoint for e in existing):
        arn = call(client, "update_endpoint", EndpointName=endpoint, EndpointConfigName=name)
    else:
        arn = call(client, "create_endpoint", EndpointName=endpoint, EndpointConfigName=name)
    console.print(arn["EndpointArn"])
    if wait:
        _follow(client, endpoint)


def _follow(client: BaseClient, endpoint: str) -> None:
    last = None
    with console.status(f"{endpoint}: waiting") as spinner:
        while True:
            desc = call(client, "describe_endpoint", EndpointName=endpoint)
            status = desc["EndpointStatus"]
            if status != last:
                spinner.update(f"{endpoint}: {status}")
                last = status
            if status not in SETTLING:
                break
            time.sleep(0.5)
    reason = desc.get("FailureReason")
    if status != "InService" or reason:
        err.print(f"[red]{endpoint}: {status}[/red]: {reason or 'no reason recorded'}")
        raise typer.Exit(1)
    console.print(f"{endpoint}: [green]InService[/green] (config {desc['EndpointConfigName']})")
