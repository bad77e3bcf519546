"""MLflow Apps: list with live status, create, describe, update, delete, open the UI. An App's
page is at its id (the last part of its ARN); its operations take its ARN."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mlfleet.console.app import PREFIX, PageRoute, Visit
from mlfleet.console.deletion import Deletion, attempt
from mlfleet.console.forms import enum_values, parse_tags, tags_text
from mlfleet.fleet.service import TRANSITIONAL
from mlfleet.protocol.errors import AwsError

_LIST = f"{PREFIX}/apps"


def _detail(app_id: str) -> str:
    return f"{_LIST}/{app_id}"


def _arn(visit: Visit, app_id: str) -> str:
    return str(visit.console.context["app_arn"](app_id))


async def app_list(visit: Visit) -> web.StreamResponse:
    apps: list[dict[str, Any]] = []
    params: dict[str, Any] = {"SortBy": "Name", "SortOrder": "Ascending"}
    try:
        while True:
            page = visit.call("sagemaker", "ListMlflowApps", params)
            apps.extend(_described(visit, summary) for summary in page["Summaries"])
            if "NextToken" not in page:
                break
            params["NextToken"] = page["NextToken"]
    except AwsError as exc:
        return visit.render("apps/list.html", apps=[], refused=exc, settling=False)
    return visit.render(
        "apps/list.html",
        apps=apps,
        refused=None,
        settling=any(a["Status"] in TRANSITIONAL for a in apps),
    )


def _described(visit: Visit, summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with what only Describe returns (whether it runs, its URL), if allowed."""
    try:
        found: dict[str, Any] = visit.call(
            "sagemaker", "DescribeMlflowApp", {"Arn": summary["Arn"]}
        )
    except AwsError:
        return summary
    return found


def _create_form(visit: Visit, error: AwsError | None, status: int) -> web.Response:
    return visit.render(
        "apps/new.html",
        status=status,
        error=error,
        values=visit.form or {},
        modes=enum_values("sagemaker", "ModelRegistrationMode"),
        default_role=visit.console.context["default_role_arn"],
    )


async def create_form(visit: Visit) -> web.StreamResponse:
    return _create_form(visit, None, 200)


async def create(visit: Visit) -> web.StreamResponse:
    params: dict[str, Any] = {
        "Name": visit.field("Name"),
        "ArtifactStoreUri": visit.field("ArtifactStoreUri"),
        "RoleArn": visit.field("RoleArn"),
        "ModelRegistrationMode": visit.field("ModelRegistrationMode") or None,
        "WeeklyMaintenanceWindowStart": visit.field("WeeklyMaintenanceWindowStart") or None,
        "AccountDefaultStatus": "ENABLED" if visit.field("AccountDefault") == "on" else None,
    }
    try:
        params["Tags"] = parse_tags(visit.field("Tags"))
        answer = visit.call(
            "sagemaker",
            "CreateMlflowApp",
            {key: value for key, value in params.items() if value is not None},
        )
    except AwsError as exc:
        return _create_form(visit, exc, 400)
    app_id = answer["Arn"].rsplit("/", 1)[1]
    raise visit.back(_detail(app_id), f"Creating MLflow App {params['Name']}.")


async def detail(visit: Visit) -> web.StreamResponse:
    app_id = visit.request.match_info["name"]
    arn = _arn(visit, app_id)
    try:
        app = visit.call("sagemaker", "DescribeMlflowApp", {"Arn": arn})
    except AwsError as exc:
        if exc.code == "ResourceNotFound":
            visit.flash(f"MLflow App {app_id} does not exist (any more).", "info")
        else:
            visit.refused(exc)
        raise web.HTTPSeeOther(_LIST) from None
    try:
        tags = list(visit.call("sagemaker", "ListTags", {"ResourceArn": arn})["Tags"])
    except AwsError:
        tags = []
    return visit.render(
        "apps/detail.html",
        app=app,
        app_id=app_id,
        tags=tags_text(tags),
        settling=app["Status"] in TRANSITIONAL,
        modes=enum_values("sagemaker", "ModelRegistrationMode"),
        charts=visit.console.context["server_charts"](app_id),
    )


async def update(visit: Visit) -> web.StreamResponse:
    app_id = visit.request.match_info["name"]
    params: dict[str, Any] = {"Arn": _arn(visit, app_id)}
    for member in ("Name", "ArtifactStoreUri", "ModelRegistrationMode"):
        if visit.field(member):
            params[member] = visit.field(member)
    params["AccountDefaultStatus"] = (
        "ENABLED" if visit.field("AccountDefault") == "on" else ("DISABLED")
    )
    attempt(
        visit,
        lambda: visit.call("sagemaker", "UpdateMlflowApp", params),
        _detail(app_id),
        f"Updating {app_id}.",
    )


async def open_ui(visit: Visit) -> web.StreamResponse:
    """A fresh single-use presigned URL per click, so the link never sits in a page."""
    app_id = visit.request.match_info["name"]
    try:
        answer = visit.call(
            "sagemaker",
            "CreatePresignedMlflowAppUrl",
            {"Arn": _arn(visit, app_id), "ExpiresInSeconds": 30},
        )
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(_detail(app_id)) from None
    raise web.HTTPSeeOther(answer["AuthorizedUrl"])


_DELETION = Deletion(
    noun="MLflow App",
    detail=_detail,
    after=_LIST,
    consequence="The App and its metadata database are removed. Its artifacts stay in the "
    "artifact store.",
    run=lambda visit, app_id: visit.call(
        "sagemaker", "DeleteMlflowApp", {"Arn": _arn(visit, app_id)}
    ),
    done="Deleting {name}. Its artifacts stay in the artifact store.",
)

ROUTES = [
    PageRoute("GET", "/apps", app_list),
    PageRoute("GET", "/apps/new", create_form),
    PageRoute("POST", "/apps", create),
    PageRoute("GET", "/apps/{name}", detail),
    PageRoute("POST", "/apps/{name}/update", update),
    PageRoute("POST", "/apps/{name}/ui", open_ui),
    PageRoute("GET", "/apps/{name}/delete", _DELETION.confirm),
    PageRoute("POST", "/apps/{name}/delete", _DELETION.delete),
]
