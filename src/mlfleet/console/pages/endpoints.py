"""Endpoints: list, describe with variants and configuration, invoke from a form, delete."""

from __future__ import annotations

import json
from urllib.parse import quote

from aiohttp import web

from mlfleet.console.app import PREFIX, PageRoute, Visit
from mlfleet.console.deletion import Deletion
from mlfleet.console.pages.registry import newest_first
from mlfleet.deploy.responses import Invocations, Invoked
from mlfleet.protocol.errors import AwsError, ValidationError

_LIST = f"{PREFIX}/endpoints"
# Statuses that change by themselves: the page refreshes until they settle.
SETTLING = {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"}
# What the scoring servers read (MLflow's pyfunc server); the invoke form offers these.
CONTENT_TYPES = ("application/json", "text/csv")
EXAMPLE_BODY = '{"inputs": [[0.1, 1.0]]}'


def _detail(name: str) -> str:
    return f"{_LIST}/{quote(name, safe='')}"


async def endpoint_list(visit: Visit) -> web.StreamResponse:
    try:
        page = newest_first(visit, "ListEndpoints", {})
    except AwsError as exc:
        return visit.render(
            "endpoints/list.html", endpoints=[], next_token=None, refused=exc, settling=False
        )
    endpoints = page["Endpoints"]
    return visit.render(
        "endpoints/list.html",
        endpoints=endpoints,
        next_token=page.get("NextToken"),
        refused=None,
        settling=any(e["EndpointStatus"] in SETTLING for e in endpoints),
    )


async def detail(visit: Visit) -> web.StreamResponse:
    return _detail_page(visit, form={}, answer=None, error=None)


def _detail_page(
    visit: Visit,
    form: dict[str, str],
    answer: Invoked | None,
    error: AwsError | None,
    status: int = 200,
) -> web.Response:
    name = visit.request.match_info["name"]
    try:
        endpoint = visit.call("sagemaker", "DescribeEndpoint", {"EndpointName": name})
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(_LIST) from None
    # The configuration adds each variant's model and instance type; a reader may lack it.
    try:
        config = visit.call(
            "sagemaker",
            "DescribeEndpointConfig",
            {"EndpointConfigName": endpoint["EndpointConfigName"]},
        )
        configured = {v["VariantName"]: v for v in config["ProductionVariants"]}
    except AwsError:
        configured = {}
    charts = visit.console.context.get("endpoint_charts", lambda _name: [])(name)
    return visit.render(
        "endpoints/detail.html",
        status=status,
        endpoint=endpoint,
        configured=configured,
        charts=charts,
        settling=endpoint["EndpointStatus"] in SETTLING and answer is None and error is None,
        content_types=CONTENT_TYPES,
        example=EXAMPLE_BODY,
        form=form,
        answer=answer,
        answer_text=_readable(answer) if answer else None,
        error=error,
    )


def _readable(answer: Invoked) -> str:
    text = answer.body.decode(errors="replace")
    if answer.content_type.startswith("application/json"):
        try:
            return json.dumps(json.loads(text), indent=2)
        except ValueError:
            pass
    return text


async def invoke(visit: Visit) -> web.StreamResponse:
    """InvokeEndpoint as the signed-in principal; the answer is shown on the endpoint's page.

    Like SageMaker's own console, invocations are data events: not in the audit trail."""
    name = visit.request.match_info["name"]
    form = {
        "Body": visit.field("Body"),
        "ContentType": visit.field("ContentType"),
        "TargetVariant": visit.field("TargetVariant"),
    }
    invocations: Invocations = visit.console.context["invocations"]
    try:
        if form["ContentType"] not in CONTENT_TYPES:
            raise ValidationError(f"Content type must be one of {', '.join(CONTENT_TYPES)}.")
        answer = await invocations.invoke(
            visit.principal,
            name,
            form["Body"].encode(),
            content_type=form["ContentType"],
            target_variant=form["TargetVariant"] or None,
            source_ip=visit.request.remote,
            secure_transport=visit.request.secure,
        )
    except AwsError as exc:
        return _detail_page(visit, form, None, exc, status=exc.status)
    return _detail_page(visit, form, answer, None)


_DELETION = Deletion(
    noun="endpoint",
    detail=_detail,
    after=_LIST,
    consequence="Its instances stop and invocations are refused. Its endpoint configuration and "
    "model stay, so it can be created again from them.",
    run=lambda visit, name: visit.call("sagemaker", "DeleteEndpoint", {"EndpointName": name}),
    done="Deleting endpoint {name}.",
)


ROUTES = [
    PageRoute("GET", "/endpoints", endpoint_list),
    PageRoute("GET", "/endpoints/{name}", detail),
    PageRoute("POST", "/endpoints/{name}/invoke", invoke),
    PageRoute("GET", "/endpoints/{name}/delete", _DELETION.confirm),
    PageRoute("POST", "/endpoints/{name}/delete", _DELETION.delete),
]
