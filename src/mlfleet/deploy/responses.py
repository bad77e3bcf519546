"""Deployment operations at ``POST /`` (AWS JSON 1.1), and InvokeEndpoint (REST-JSON).

Control-plane operations are authorized as ``sagemaker:<Operation>`` on the resource's ARN
with its tags; creates also present their request tags. InvokeEndpoint is authorized as
``sagemaker:InvokeEndpoint`` on the endpoint's ARN. Like SageMaker, invocations are data
events: they are not written to the audit trail.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from mlfleet.api.endpoint import Check, Operation
from mlfleet.auth.credentials import Credentials
from mlfleet.deploy.deployer import Deployer, Variant
from mlfleet.deploy.service import Deployments
from mlfleet.iam.authorizer import Authorizer, RequestFacts
from mlfleet.protocol.errors import AwsError
from mlfleet.state.models import Endpoint, EndpointConfig, SageMakerModel

Handler = Callable[[dict[str, Any]], dict[str, Any]]
Kind = tuple[type[SageMakerModel | EndpointConfig | Endpoint], str, str]
MODEL: Kind = (SageMakerModel, "model", "ModelName")
CONFIG: Kind = (EndpointConfig, "endpoint-config", "EndpointConfigName")
ENDPOINT: Kind = (Endpoint, "endpoint", "EndpointName")
VARIANT_HEADER = "x-Amzn-Invoked-Production-Variant"


def deploy_operations(deployments: Deployments) -> dict[str, Operation]:
    """The model, endpoint config and endpoint operations of SageMaker's API."""

    def operation(name: str, handler: Handler, kind: Kind | None, create: bool) -> Operation:
        action = f"sagemaker:{name}"

        def checks(req: dict[str, Any], _principal: Any) -> list[Check]:
            if kind is None:
                return [Check(action, "*")]
            model, arn_kind, member = kind
            arn = deployments.arn(arn_kind, req[member])
            if create:
                return [Check(action, arn, request_tags=req.get("Tags", []))]
            return [Check(action, arn, resource_tags=deployments.tags(model, arn))]

        return Operation(run=lambda req, _p, _f: handler(req), checks=checks)

    d = deployments
    return {
        "CreateModel": operation("CreateModel", d.create_model, MODEL, True),
        "DescribeModel": operation("DescribeModel", d.describe_model, MODEL, False),
        "DeleteModel": operation("DeleteModel", d.delete_model, MODEL, False),
        "ListModels": operation("ListModels", d.list_models, None, False),
        "CreateEndpointConfig": operation(
            "CreateEndpointConfig", d.create_endpoint_config, CONFIG, True
        ),
        "DescribeEndpointConfig": operation(
            "DescribeEndpointConfig", d.describe_endpoint_config, CONFIG, False
        ),
        "ListEndpointConfigs": operation(
            "ListEndpointConfigs", d.list_endpoint_configs, None, False
        ),
        "DeleteEndpointConfig": operation(
            "DeleteEndpointConfig", d.delete_endpoint_config, CONFIG, False
        ),
        "CreateEndpoint": operation("CreateEndpoint", d.create_endpoint, ENDPOINT, True),
        "DescribeEndpoint": operation("DescribeEndpoint", d.describe_endpoint, ENDPOINT, False),
        "UpdateEndpoint": operation("UpdateEndpoint", d.update_endpoint, ENDPOINT, False),
        "ListEndpoints": operation("ListEndpoints", d.list_endpoints, None, False),
        "DeleteEndpoint": operation("DeleteEndpoint", d.delete_endpoint, ENDPOINT, False),
    }


def runtime_error(error: AwsError, **members: Any) -> web.Response:
    """An error in sagemaker-runtime's REST-JSON shape: the code in x-amzn-ErrorType."""
    body = {"message": error.message, **members}
    return web.Response(
        status=error.status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"x-amzn-ErrorType": error.code},
    )


class Invocations:
    """``POST /endpoints/{EndpointName}/invocations``: sagemaker-runtime's InvokeEndpoint."""

    def __init__(
        self,
        deployments: Deployments,
        deployer: Deployer,
        credentials: Credentials,
        authorizer: Authorizer,
        region: str,
        account_id: str,
    ) -> None:
        self._deployments = deployments
        self._deployer = deployer
        self._credentials = credentials
        self._authorizer = authorizer
        self._region = region
        self._account = account_id
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        try:
            principal = self._credentials.verify_sigv4(
                method=request.method,
                raw_path_qs=request.raw_path,
                headers=request.headers,
                body=body,
                # sagemaker-runtime signs with the name "sagemaker".
                service="sagemaker",
                region=self._region,
            )
            arn = self._deployments.arn("endpoint", name)
            facts = RequestFacts(
                source_ip=request.remote,
                secure_transport=request.secure,
                resource_tags=tuple(self._deployments.tags(Endpoint, arn)),
            )
            self._authorizer.require(principal, "sagemaker:InvokeEndpoint", arn, facts)
            variant = self._choose(name, request.headers.get("X-Amzn-SageMaker-Target-Variant"))
            return await self._forward(request, variant, body)
        except AwsError as exc:
            # Authentication failures keep their codes; everything else is a ValidationError
            # or carries its own code (ModelError).
            return runtime_error(exc)

    def _choose(self, name: str, target: str | None) -> Variant:
        variants = self._deployer.variants(name)
        if variants is None:
            raise AwsError(
                "ValidationError",
                f"Endpoint {name} of account {self._account} not found or not in service.",
            )
        serving = [v for v in variants if any(w.healthy for w in v.instances)]
        if target is not None:
            serving = [v for v in serving if v.name == target]
            if not serving:
                raise AwsError(
                    "ValidationError",
                    f"Variant {target} is not a serving production variant of endpoint {name}.",
                )
        weighted = [v for v in serving if v.weight > 0] or serving
        if not weighted:
            raise AwsError(
                "ServiceUnavailable", f"Endpoint {name} has no healthy instance right now.", 503
            )
        return random.choices(weighted, weights=[v.weight or 1.0 for v in weighted])[0]

    async def _forward(self, request: web.Request, variant: Variant, body: bytes) -> web.Response:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        instance = random.choice([w for w in variant.instances if w.healthy])
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        if "Accept" in request.headers:
            headers["Accept"] = request.headers["Accept"]
        url = f"http://127.0.0.1:{instance.port}/invocations"
        try:
            async with self._http.post(url, data=body, headers=headers) as resp:
                answer = await resp.read()
                content_type = resp.headers.get("Content-Type", "application/json")
                status = resp.status
        except aiohttp.ClientError as exc:
            raise AwsError(
                "ServiceUnavailable", f"Variant {variant.name} did not answer: {exc}", 503
            ) from exc
        if status >= 400:
            original = answer.decode(errors="replace")
            return runtime_error(
                AwsError(
                    "ModelError",
                    f"Received client error ({status}) from primary with message "
                    f'"{original[:1000]}".',
                    424,
                ),
                OriginalStatusCode=status,
                OriginalMessage=original,
            )
        return web.Response(
            body=answer, headers={"Content-Type": content_type, VARIANT_HEADER: variant.name}
        )
