"""``mlfleet audit``: read the trail through the API; verify and export it where the daemon runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mlfleet.audit.trail import open_trail
from mlfleet.auth.secrets import SecretBox
from mlfleet.cli.common import (
    DatabaseUrl,
    DataDir,
    EndpointUrl,
    call,
    console,
    err,
    service_client,
)
from mlfleet.settings import load_settings
from mlfleet.state.db import open_database

audit_app = typer.Typer(no_args_is_help=True)

_ATTRIBUTES = {
    "user": "Username",
    "event": "EventName",
    "resource": "ResourceName",
    "key": "AccessKeyId",
    "source": "EventSource",
}


@audit_app.command()
def events(
    user: Annotated[str | None, typer.Option(help="Only this user's calls.")] = None,
    event: Annotated[str | None, typer.Option(help="Only this operation (EventName).")] = None,
    resource: Annotated[str | None, typer.Option(help="Only calls on this ARN.")] = None,
    key: Annotated[str | None, typer.Option(help="Only calls signed with this key.")] = None,
    source: Annotated[str | None, typer.Option(help="e.g. iam.amazonaws.com")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Until this time (UTC).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many events.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Recent calls, newest first (CloudTrail LookupEvents)."""
    chosen = {
        name: value
        for name, value in dict(
            user=user, event=event, resource=resource, key=key, source=source
        ).items()
        if value is not None
    }
    if len(chosen) > 1:
        err.print("[red]error:[/red] filter by one of --user, --event, --resource, --key, --source")
        raise typer.Exit(2)
    params: dict[str, Any] = {
        "LookupAttributes": [
            {"AttributeKey": _ATTRIBUTES[name], "AttributeValue": value}
            for name, value in chosen.items()
        ]
    }
    for member, moment in (("StartTime", since), ("EndTime", until)):
        if moment is not None:
            params[member] = moment.replace(tzinfo=moment.tzinfo or UTC)
    client = service_client(data_dir, endpoint_url, "cloudtrail")
    found: list[dict[str, Any]] = []
    while len(found) < limit:
        page = call(client, "lookup_events", MaxResults=min(50, limit - len(found)), **params)
        found += page["Events"]
        if "NextToken" not in page:
            break
        params["NextToken"] = page["NextToken"]
    if as_json:
        for item in found:
            console.print_json(item["CloudTrailEvent"])
        return
    table = Table("time", "user", "event", "resource", "error")
    for column in table.columns:
        column.overflow = "fold"  # ARNs are long; cut, they would be useless
    for item in found:
        record = json.loads(item["CloudTrailEvent"])
        table.add_row(
            record["eventTime"],
            escape(item.get("Username", record["userIdentity"].get("type", ""))),
            f"{record['eventSource'].split('.')[0]}:{record['eventName']}",
            escape(", ".join(r["ResourceName"] or "" for r in item["Resources"])),
            escape(record.get("errorCode", "")),
        )
    console.print(table)


@audit_app.command()
def verify(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Check the hash chain of the trail (run on the daemon's machine, with its data dir)."""
    trail = _local_trail(data_dir, database_url)
    result = trail.verify()
    if result.ok:
        console.print(
            f"ok: {result.records} records, chain intact, head {result.head}", highlight=False
        )
        return
    for problem in result.problems:
        err.print(f"[red]tampered:[/red] {escape(problem)}", soft_wrap=True)
    raise typer.Exit(1)


@audit_app.command()
def export(
    folder: Annotated[Path, typer.Argument(help="Where to write AWSLogs/... files.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Write the trail as CloudTrail log files (gzipped JSON, one per hour of events)."""
    written = _local_trail(data_dir, database_url).export(folder)
    console.print(f"wrote {len(written)} log files under {folder}", highlight=False)


def _local_trail(data_dir: Path | None, database_url: str | None) -> Any:
    settings = load_settings({"data_dir": data_dir, "database_url": database_url})
    if not settings.master_key_path.exists():
        err.print(
            f"[red]error:[/red] no master key at {settings.master_key_path}: run this on the "
            "daemon's machine, with its --data-dir"
        )
        raise typer.Exit(1)
    box = SecretBox.from_file(settings.master_key_path)
    return open_trail(settings, open_database(settings.control_db_url), box)
