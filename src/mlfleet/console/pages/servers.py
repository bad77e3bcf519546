"""Tracking servers: list with live status, create, describe, update, start, stop, delete, UI;
a server's backups (take one, restore one into a new server), its maintenance, run now, and the
MLflow release it runs, changed in place."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mlfleet.console.app import PREFIX, Page, PageRoute, Visit
from mlfleet.console.deletion import Deletion, attempt, named_action
from mlfleet.console.forms import enum_values, parse_tags, tags_text
from mlfleet.fleet.service import TRANSITIONAL
from mlfleet.protocol.errors import AwsError

_LIST = f"{PREFIX}/servers"


def _detail(name: str) -> str:
    return f"{_LIST}/{name}"


def _all_servers(visit: Visit) -> list[dict[str, Any]]:
    servers: list[dict[str, Any]] = []
    params: dict[str, Any] = {"SortBy": "Name", "SortOrder": "Ascending"}
    while True:
        page = visit.call("sagemaker", "ListMlflowTrackingServers", params)
        servers.extend(page["TrackingServerSummaries"])
        if "NextToken" not in page:
            return servers
        params["NextToken"] = page["NextToken"]


async def server_list(visit: Visit) -> web.StreamResponse:
    try:
        servers = [_with_details(visit, summary) for summary in _all_servers(visit)]
    except AwsError as exc:
        return visit.render("servers/list.html", servers=[], refused=exc, settling=False)
    return visit.render(
        "servers/list.html",
        servers=servers,
        refused=None,
        settling=any(s["TrackingServerStatus"] in TRANSITIONAL for s in servers),
    )


def _with_details(visit: Visit, summary: dict[str, Any]) -> dict[str, Any]:
    """The summary plus size and URL, which only Describe returns (and may deny: then blank)."""
    try:
        details: dict[str, Any] = visit.call(
            "sagemaker",
            "DescribeMlflowTrackingServer",
            {"TrackingServerName": summary["TrackingServerName"]},
        )
    except AwsError:
        return summary
    return details


def _create_form(visit: Visit, error: AwsError | None, status: int) -> web.Response:
    return visit.render(
        "servers/new.html",
        status=status,
        error=error,
        values=visit.form or {},
        sizes=enum_values("sagemaker", "TrackingServerSize"),
        default_role=visit.console.context["default_role_arn"],
    )


async def create_form(visit: Visit) -> web.StreamResponse:
    return _create_form(visit, None, 200)


async def create(visit: Visit) -> web.StreamResponse:
    params: dict[str, Any] = {
        "TrackingServerName": visit.field("TrackingServerName"),
        "ArtifactStoreUri": visit.field("ArtifactStoreUri"),
        "RoleArn": visit.field("RoleArn"),
        "TrackingServerSize": visit.field("TrackingServerSize") or None,
        "MlflowVersion": visit.field("MlflowVersion") or None,
        "AutomaticModelRegistration": visit.field("AutomaticModelRegistration") == "on",
        "WeeklyMaintenanceWindowStart": visit.field("WeeklyMaintenanceWindowStart") or None,
        "S3BucketOwnerAccountId": visit.field("S3BucketOwnerAccountId") or None,
        "S3BucketOwnerVerification": visit.field("S3BucketOwnerVerification") == "on",
    }
    try:
        params["Tags"] = parse_tags(visit.field("Tags"))
        visit.call(
            "sagemaker",
            "CreateMlflowTrackingServer",
            {key: value for key, value in params.items() if value is not None},
        )
    except AwsError as exc:
        return _create_form(visit, exc, 400)
    name = params["TrackingServerName"]
    raise visit.back(_detail(name), f"Creating tracking server {name}.")


async def detail(visit: Visit) -> web.StreamResponse:
    name = visit.request.match_info["name"]
    try:
        server = visit.call(
            "sagemaker", "DescribeMlflowTrackingServer", {"TrackingServerName": name}
        )
    except AwsError as exc:
        if exc.code == "ResourceNotFound":
            visit.flash(f"Tracking server {name} does not exist (any more).", "info")
            raise web.HTTPSeeOther(_LIST) from None
        visit.refused(exc)
        raise web.HTTPSeeOther(_LIST) from None
    charts = visit.console.context["server_charts"](name)
    return visit.render(
        "servers/detail.html",
        server=server,
        backups=_backups(visit, name),
        tags=tags_text(_tags(visit, server["TrackingServerArn"])),
        settling=server["TrackingServerStatus"] in TRANSITIONAL,
        sizes=enum_values("sagemaker", "TrackingServerSize"),
        charts=charts,
        error=None,
    )


def _backups(visit: Visit, name: str) -> list[dict[str, Any]] | None:
    """The server's backups, newest first; None when the caller may not list them."""
    try:
        answer = visit.call("mlfleet", "ListTrackingServerBackups", {"TrackingServerName": name})
    except AwsError:
        return None
    return list(answer["TrackingServerBackups"])


async def restore(visit: Visit) -> web.StreamResponse:
    name = visit.request.match_info["name"]
    new_name = visit.field("TrackingServerName")
    attempt(
        visit,
        lambda: visit.call(
            "mlfleet",
            "RestoreTrackingServerBackup",
            {"BackupId": visit.field("BackupId"), "TrackingServerName": new_name},
        ),
        _detail(name),
        f"Restoring into a new tracking server, {new_name}.",
    )


async def change_release(visit: Visit) -> web.StreamResponse:
    name = visit.request.match_info["name"]
    release = visit.field("MlflowVersion")
    attempt(
        visit,
        lambda: visit.call(
            "mlfleet",
            "UpdateTrackingServerMlflowVersion",
            {"TrackingServerName": name, "MlflowVersion": release},
        ),
        _detail(name),
        f"Moving {name} to MLflow {release}.",
    )


def _tags(visit: Visit, arn: str) -> list[dict[str, str]]:
    try:
        return list(visit.call("sagemaker", "ListTags", {"ResourceArn": arn})["Tags"])
    except AwsError:
        return []


async def update(visit: Visit) -> web.StreamResponse:
    name = visit.request.match_info["name"]
    params: dict[str, Any] = {"TrackingServerName": name}
    for member in ("ArtifactStoreUri", "TrackingServerSize", "WeeklyMaintenanceWindowStart"):
        if visit.field(member):
            params[member] = visit.field(member)
    params["AutomaticModelRegistration"] = visit.field("AutomaticModelRegistration") == "on"
    attempt(
        visit,
        lambda: visit.call("sagemaker", "UpdateMlflowTrackingServer", params),
        _detail(name),
        f"Updating {name}.",
    )


_DELETION = Deletion(
    noun="tracking server",
    detail=_detail,
    after=_LIST,
    consequence="The server and its metadata database are removed. Its artifacts stay in the "
    "artifact store.",
    run=lambda visit, name: visit.call(
        "sagemaker", "DeleteMlflowTrackingServer", {"TrackingServerName": name}
    ),
    done="Deleting {name}. Its artifacts stay in the artifact store.",
)


def _lifecycle(operation: str, done: str, service: str = "sagemaker") -> Page:
    return named_action(service, operation, "TrackingServerName", _detail, done)


async def open_ui(visit: Visit) -> web.StreamResponse:
    """A fresh single-use presigned URL per click, so the link never sits in a page."""
    name = visit.request.match_info["name"]
    try:
        answer = visit.call(
            "sagemaker",
            "CreatePresignedMlflowTrackingServerUrl",
            {"TrackingServerName": name, "ExpiresInSeconds": 30},
        )
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(_detail(name)) from None
    raise web.HTTPSeeOther(answer["AuthorizedUrl"])


ROUTES = [
    PageRoute("GET", "/servers", server_list),
    PageRoute("GET", "/servers/new", create_form),
    PageRoute("POST", "/servers", create),
    PageRoute("GET", "/servers/{name}", detail),
    PageRoute(
        "POST", "/servers/{name}/start", _lifecycle("StartMlflowTrackingServer", "Starting {name}.")
    ),
    PageRoute(
        "POST", "/servers/{name}/stop", _lifecycle("StopMlflowTrackingServer", "Stopping {name}.")
    ),
    PageRoute("POST", "/servers/{name}/update", update),
    PageRoute(
        "POST",
        "/servers/{name}/backup",
        _lifecycle("CreateTrackingServerBackup", "Backing up {name}.", service="mlfleet"),
    ),
    PageRoute(
        "POST",
        "/servers/{name}/maintenance",
        _lifecycle("StartTrackingServerMaintenance", "Maintaining {name}.", service="mlfleet"),
    ),
    PageRoute("POST", "/servers/{name}/restore", restore),
    PageRoute("POST", "/servers/{name}/mlflow-version", change_release),
    PageRoute("GET", "/servers/{name}/delete", _DELETION.confirm),
    PageRoute("POST", "/servers/{name}/delete", _DELETION.delete),
    PageRoute("POST", "/servers/{name}/ui", open_ui),
]
