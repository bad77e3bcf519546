"""``mlfleet backup``, ``backups``, ``restore`` and ``maintenance``: mlfleet's own operations,
by the API."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mlfleet.cli.common import DataDir, EndpointUrl, call, console, err, follow, service_client

Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Follow it until it is done.")]


def backup(
    name: str, wait: Wait = True, data_dir: DataDir = None, endpoint_url: EndpointUrl = None
) -> None:
    """Back up a tracking server (its metadata and artifacts) while it serves."""
    client = service_client(data_dir, endpoint_url, "mlfleet")
    started = call(client, "create_tracking_server_backup", TrackingServerName=name)
    backup_id = started["BackupId"]
    console.print(backup_id)
    if not wait:
        return
    with console.status(f"{backup_id}: InProgress"):
        while True:
            found = call(client, "describe_tracking_server_backup", BackupId=backup_id)
            if found["BackupStatus"] != "InProgress":
                break
            time.sleep(0.5)
    if found["BackupStatus"] == "Failed":
        err.print(f"[red]{backup_id}: Failed[/red]: {escape(found.get('FailureReason', ''))}")
        raise typer.Exit(1)
    console.print(
        f"{backup_id}: [green]Completed[/green]: {found['ArtifactCount']} artifacts "
        f"({_size(found['ArtifactBytes'])}), metadata {_size(found['MetadataBytes'])}"
    )


def backups(
    name: Annotated[str | None, typer.Argument(help="Only this server's backups.")] = None,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """List backups, newest first (also those of servers since deleted)."""
    client = service_client(data_dir, endpoint_url, "mlfleet")
    table = Table("backup", "server", "status", "by", "mlflow", "artifacts", "size", "taken")
    params: dict[str, Any] = {"TrackingServerName": name} if name else {}
    while True:
        page = call(client, "list_tracking_server_backups", **params)
        for b in page["TrackingServerBackups"]:
            table.add_row(
                b["BackupId"],
                b["TrackingServerName"],
                b["BackupStatus"],
                b["BackupOrigin"],
                b["MlflowVersion"],
                str(b["ArtifactCount"]),
                _size(b["ArtifactBytes"] + b["MetadataBytes"]),
                b["CreationTime"].strftime("%Y-%m-%d %H:%M:%S"),
            )
        if "NextToken" not in page:
            break
        params["NextToken"] = page["NextToken"]
    console.print(table)


def restore(
    backup_id: str,
    to: Annotated[str, typer.Option("--to", help="The new tracking server's name.")],
    artifact_store_uri: Annotated[
        str | None,
        typer.Option(
            help="Its store (default: a folder or s3:// prefix named after it beside the "
            "original's)."
        ),
    ] = None,
    wait: Wait = True,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Create a new tracking server from a backup, and report artifacts the backup lacks."""
    client = service_client(data_dir, endpoint_url, "mlfleet")
    params: dict[str, Any] = {"BackupId": backup_id, "TrackingServerName": to}
    if artifact_store_uri:
        params["ArtifactStoreUri"] = artifact_store_uri
    console.print(call(client, "restore_tracking_server_backup", **params)["TrackingServerArn"])
    if not wait:
        return
    sagemaker = service_client(data_dir, endpoint_url)
    follow(sagemaker, to)
    report = call(sagemaker, "describe_mlflow_tracking_server", TrackingServerName=to).get(
        "RestoreReport", {}
    )
    console.print(f"artifacts restored: {report.get('ArtifactsRestored', 0)}")
    missing = report.get("MissingArtifacts", [])
    if missing:
        err.print(f"[yellow]missing from the backup ({len(missing)}):[/yellow]")
        for path in missing:
            err.print(f"  {escape(path)}")
        raise typer.Exit(2)


def delete_backup(
    backup_id: str, data_dir: DataDir = None, endpoint_url: EndpointUrl = None
) -> None:
    """Delete a backup (and the artifact copies only it holds)."""
    client = service_client(data_dir, endpoint_url, "mlfleet")
    call(client, "delete_tracking_server_backup", BackupId=backup_id)
    console.print(f"{backup_id}: deleted")


def maintenance(
    name: str, wait: Wait = True, data_dir: DataDir = None, endpoint_url: EndpointUrl = None
) -> None:
    """Run the server's maintenance window now: backup, database check and compaction, restart."""
    arn = call(
        service_client(data_dir, endpoint_url, "mlfleet"),
        "start_tracking_server_maintenance",
        TrackingServerName=name,
    )["TrackingServerArn"]
    console.print(arn)
    if wait:
        follow(service_client(data_dir, endpoint_url), name)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return ""
