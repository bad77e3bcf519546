"""The model registry: model package groups, their versions, approving and rejecting them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from mlfleet.console.app import PREFIX, Page, PageRoute, Visit
from mlfleet.console.deletion import attempt
from mlfleet.deploy.service import SERVER_ARN_PROPERTY
from mlfleet.protocol.errors import AwsError

_LIST = f"{PREFIX}/registry"
PAGE_SIZE = 20
# What automatic registration records of the MLflow model version a package was made from.
_MLFLOW_MODEL = "mlflow.registered_model_name"


def _group(name: str) -> str:
    return f"{_LIST}/{quote(name, safe='')}"


def _package(group: str, version: str) -> str:
    return f"{_group(group)}/{quote(version, safe='')}"


def newest_first(visit: Visit, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """One page of a SageMaker List* operation, newest first; ``?next=`` carries the token of
    the page asked for."""
    params = {
        **params,
        "SortBy": "CreationTime",
        "SortOrder": "Descending",
        "MaxResults": PAGE_SIZE,
    }
    if visit.request.query.get("next"):
        params["NextToken"] = visit.request.query["next"]
    answer: dict[str, Any] = visit.call("sagemaker", operation, params)
    return answer


def source(package: dict[str, Any]) -> str | None:
    """Where a package came from: the MLflow model version and tracking server, if any."""
    metadata = package.get("CustomerMetadataProperties") or {}
    if _MLFLOW_MODEL not in metadata:
        return package.get("SourceUri")
    server = metadata.get(SERVER_ARN_PROPERTY, "").rsplit("/", 1)[-1]
    uri = package.get("SourceUri") or f"models:/{metadata[_MLFLOW_MODEL]}"
    return f"{uri} on tracking server {server}" if server else uri


async def group_list(visit: Visit) -> web.StreamResponse:
    try:
        page = newest_first(visit, "ListModelPackageGroups", {})
    except AwsError as exc:
        return visit.render("registry/list.html", groups=[], next_token=None, refused=exc)
    return visit.render(
        "registry/list.html",
        groups=page["ModelPackageGroupSummaryList"],
        next_token=page.get("NextToken"),
        refused=None,
    )


async def group_detail(visit: Visit) -> web.StreamResponse:
    name = visit.request.match_info["group"]
    try:
        group = visit.call(
            "sagemaker", "DescribeModelPackageGroup", {"ModelPackageGroupName": name}
        )
        page = newest_first(visit, "ListModelPackages", {"ModelPackageGroupName": name})
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(_LIST) from None
    packages = page["ModelPackageSummaryList"]
    # The summary has no source; a package this principal may not describe shows none.
    sources = [_described_source(visit, p["ModelPackageArn"]) for p in packages]
    return visit.render(
        "registry/group.html",
        group=group,
        packages=list(zip(packages, sources, strict=True)),
        next_token=page.get("NextToken"),
    )


def _described_source(visit: Visit, arn: str) -> str | None:
    try:
        return source(visit.call("sagemaker", "DescribeModelPackage", {"ModelPackageName": arn}))
    except AwsError:
        return None


async def package_detail(visit: Visit) -> web.StreamResponse:
    group, version = visit.request.match_info["group"], visit.request.match_info["version"]
    try:
        package = visit.call(
            "sagemaker", "DescribeModelPackage", {"ModelPackageName": f"{group}/{version}"}
        )
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(_group(group)) from None
    specification = package.get("InferenceSpecification")
    return visit.render(
        "registry/package.html",
        package=package,
        source=source(package),
        specification=json.dumps(specification, indent=2) if specification else None,
    )


def _approval(back: Callable[[dict[str, str]], str]) -> Page:
    """UpdateModelPackage's approval status and note, then back to the page of the button."""

    async def run(visit: Visit) -> web.StreamResponse:
        arn, status = visit.field("ModelPackageArn"), visit.field("ModelApprovalStatus")
        params = {"ModelPackageArn": arn, "ModelApprovalStatus": status}
        if visit.field("ApprovalDescription"):
            params["ApprovalDescription"] = visit.field("ApprovalDescription")
        attempt(
            visit,
            lambda: visit.call("sagemaker", "UpdateModelPackage", params),
            back(dict(visit.request.match_info)),
            f"{arn} is {status} now.",
        )

    return run


ROUTES = [
    PageRoute("GET", "/registry", group_list),
    PageRoute("GET", "/registry/{group}", group_detail),
    PageRoute("POST", "/registry/{group}/approval", _approval(lambda m: _group(m["group"]))),
    PageRoute("GET", "/registry/{group}/{version}", package_detail),
    PageRoute(
        "POST",
        "/registry/{group}/{version}/approval",
        _approval(lambda m: _package(m["group"], m["version"])),
    ),
]
