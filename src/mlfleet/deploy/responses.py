"""Deployment operations at ``POST /`` (AWS JSON 1.1), and InvokeEndpoint (REST-JSON).

Control-plane operations are authorized as ``sagemaker:<Operation>`` on the resource's ARN
with its tags; creates also present their request tags. InvokeEndpoint is authorized as
``sagemaker:InvokeEndpoint`` on the endpoint's ARN. Like SageMaker, invocations are data
events: they are not written to the audit trail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from mlfleet.api.endpoint import read_body
from mlfleet.api.operations import (
    OPERATORS,
    READERS,
    USERS,
    Access,
    Call,
    OperationTable,
    Result,
    Target,
    anywhere,
)
from mlfleet.api.pipeline import ApiCall, Pipeline
from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.deploy.deployer import Deployer, Variant
from mlfleet.deploy.service import Deployments
from mlfleet.metrics import Recorder
from mlfleet.policy.authorizer import RequestFacts
from mlfleet.protocol.awsjson import InputValidator, load_service_model
from mlfleet.protocol.errors import AwsError, ServiceUnavailable, ValidationError
from mlfleet.protocol.shapes import sagemaker as shapes
from mlfleet.state.db import database_unavailable, driver_message
from mlfleet.state.models import Endpoint, EndpointConfig, SageMakerModel

log = logging.getLogger(__name__)

VARIANT_HEADER = "x-Amzn-Invoked-Production-Variant"
# How long an invocation waits for an instance being replaced, and how often it looks.
REPLACEMENT_WAIT_SECONDS = 5.0
RETRY_SECONDS = 0.05
OPERATIONS: OperationTable[Deployments] = OperationTable("sagemaker")
declare = OPERATIONS.declare


@dataclass(frozen=True)
class _Kind:
    """One kind of deployment resource: its table, ARN kind, naming member and audit type."""

    table: type[SageMakerModel | EndpointConfig | Endpoint]
    arn_kind: str
    member: str
    type: str

    def existing(self, deployments: Deployments, call: Call[Any]) -> Target:
        arn = deployments.arn(self.arn_kind, call.params[self.member])
        return Target(arn, deployments.tags(self.table, arn))

    def new(self, deployments: Deployments, call: Call[Any]) -> Target:
        arn = deployments.arn(self.arn_kind, call.params[self.member])
        return Target(arn, request_tags=call.params.get("Tags", []))


MODEL = _Kind(SageMakerModel, "model", "ModelName", "AWS::SageMaker::Model")
CONFIG = _Kind(
    EndpointConfig, "endpoint-config", "EndpointConfigName", "AWS::SageMaker::EndpointConfig"
)
ENDPOINT = _Kind(Endpoint, "endpoint", "EndpointName", "AWS::SageMaker::Endpoint")


@declare(Access.WRITE, OPERATORS, resource=MODEL.new, resource_type=MODEL.type)
def create_model(
    deployments: Deployments, call: Call[shapes.CreateModelInput]
) -> shapes.CreateModelOutput:
    return deployments.create_model(call.params)


@declare(Access.READ, READERS, resource=MODEL.existing, resource_type=MODEL.type)
def describe_model(
    deployments: Deployments, call: Call[shapes.DescribeModelInput]
) -> shapes.DescribeModelOutput:
    return deployments.describe_model(call.params)


@declare(Access.WRITE, OPERATORS, resource=MODEL.existing, resource_type=MODEL.type)
def delete_model(deployments: Deployments, call: Call[shapes.DeleteModelInput]) -> Result:
    return deployments.delete_model(call.params)


@declare(Access.LIST, READERS, resource=anywhere)
def list_models(
    deployments: Deployments, call: Call[shapes.ListModelsInput]
) -> shapes.ListModelsOutput:
    return deployments.list_models(call.params)


@declare(Access.WRITE, OPERATORS, resource=CONFIG.new, resource_type=CONFIG.type)
def create_endpoint_config(
    deployments: Deployments, call: Call[shapes.CreateEndpointConfigInput]
) -> shapes.CreateEndpointConfigOutput:
    return deployments.create_endpoint_config(call.params)


@declare(Access.READ, READERS, resource=CONFIG.existing, resource_type=CONFIG.type)
def describe_endpoint_config(
    deployments: Deployments, call: Call[shapes.DescribeEndpointConfigInput]
) -> shapes.DescribeEndpointConfigOutput:
    return deployments.describe_endpoint_config(call.params)


@declare(Access.LIST, READERS, resource=anywhere)
def list_endpoint_configs(
    deployments: Deployments, call: Call[shapes.ListEndpointConfigsInput]
) -> shapes.ListEndpointConfigsOutput:
    return deployments.list_endpoint_configs(call.params)


@declare(Access.WRITE, OPERATORS, resource=CONFIG.existing, resource_type=CONFIG.type)
def delete_endpoint_config(
    deployments: Deployments, call: Call[shapes.DeleteEndpointConfigInput]
) -> Result:
    return deployments.delete_endpoint_config(call.params)


@declare(Access.WRITE, OPERATORS, resource=ENDPOINT.new, resource_type=ENDPOINT.type)
def create_endpoint(
    deployments: Deployments, call: Call[shapes.CreateEndpointInput]
) -> shapes.CreateEndpointOutput:
    return deployments.create_endpoint(call.params)


@declare(Access.READ, READERS, resource=ENDPOINT.existing, resource_type=ENDPOINT.type)
def describe_endpoint(
    deployments: Deployments, call: Call[shapes.DescribeEndpointInput]
) -> shapes.DescribeEndpointOutput:
    return deployments.describe_endpoint(call.params)


@declare(Access.WRITE, OPERATORS, resource=ENDPOINT.existing, resource_type=ENDPOINT.type)
def update_endpoint(
    deployments: Deployments, call: Call[shapes.UpdateEndpointInput]
) -> shapes.UpdateEndpointOutput:
    return deployments.update_endpoint(call.params)


@declare(Access.LIST, READERS, resource=anywhere)
def list_endpoints(
    deployments: Deployments, call: Call[shapes.ListEndpointsInput]
) -> shapes.ListEndpointsOutput:
    return deployments.list_endpoints(call.params)


@declare(Access.WRITE, OPERATORS, resource=ENDPOINT.existing, resource_type=ENDPOINT.type)
def delete_endpoint(deployments: Deployments, call: Call[shapes.DeleteEndpointInput]) -> Result:
    return deployments.delete_endpoint(call.params)


# sagemaker-runtime's one operation, authorized as a sagemaker action; invocations are data
# events, which the audit trail does not keep (as in SageMaker).
RUNTIME_OPERATIONS: OperationTable[Invocations] = OperationTable(
    "sagemaker", ENDPOINT.type, model="sagemaker-runtime"
)


def _invoked(invocations: Invocations, call: Call[Any]) -> Target:
    return ENDPOINT.existing(invocations.deployments, call)


@RUNTIME_OPERATIONS.declare(Access.READ, USERS, resource=_invoked, audited=False)
async def invoke_endpoint(invocations: Invocations, call: Call[Any]) -> Invoked:
    params = call.params
    name = params["EndpointName"]
    # An instance that died is replaced: the invocation goes to another one, or waits for the
    # replacement a bounded time, rather than fail.
    deadline = time.monotonic() + REPLACEMENT_WAIT_SECONDS
    while True:
        try:
            variant = invocations.choose_variant(name, params["TargetVariant"])
            return await invocations.forward(
                name, variant, params["Body"], params["ContentType"], params["Accept"]
            )
        except (NoHealthyInstance, InstanceUnreachable) as exc:
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(str(exc)) from None
        await asyncio.sleep(RETRY_SECONDS)


class NoHealthyInstance(Exception):
    """Every instance of the variants that may serve is down (being replaced)."""


class InstanceUnreachable(Exception):
    """The instance refused the connection: the invocation was not sent."""


def runtime_error(error: AwsError, **members: Any) -> web.Response:
    """An error in sagemaker-runtime's REST-JSON shape: the code in x-amzn-ErrorType."""
    body = {"message": error.message, **members}
    return web.Response(
        status=error.status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"x-amzn-ErrorType": error.code},
    )


@dataclass(frozen=True)
class Invoked:
    """A model's answer to one invocation, and the variant that gave it."""

    body: bytes
    content_type: str
    variant: str


class ModelError(AwsError):
    """The model refused the input; SageMaker passes on its status and message (424)."""

    def __init__(self, original_status: int, original_message: str) -> None:
        super().__init__(
            "ModelError",
            f"Received client error ({original_status}) from primary with message "
            f'"{original_message[:1000]}".',
            424,
        )
        self.original_status = original_status
        self.original_message = original_message


class Invocations:
    """``POST /endpoints/{EndpointName}/invocations``: sagemaker-runtime's InvokeEndpoint."""

    def __init__(
        self,
        deployments: Deployments,
        deployer: Deployer,
        credentials: Credentials,
        pipeline: Pipeline,
        region: str,
        account_id: str,
        metrics: Recorder,
    ) -> None:
        self.deployments = deployments
        self._deployer = deployer
        self._credentials = credentials
        self._pipeline = pipeline
        self._operation = RUNTIME_OPERATIONS.bind(self)["InvokeEndpoint"]
        self._region = region
        self._account = account_id
        # Invocations and latency per endpoint name, for the console's charts.
        self._metrics = metrics

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body = await read_body(request)
            _check_headers(request)
            principal = self._credentials.verify_sigv4(
                request,
                body,
                # sagemaker-runtime signs with the name "sagemaker".
                service="sagemaker",
                region=self._region,
            )
            invoked = await self.invoke(
                principal,
                request.match_info["name"],
                body,
                content_type=request.headers.get("Content-Type", "application/json"),
                accept=request.headers.get("Accept"),
                target_variant=request.headers.get("X-Amzn-SageMaker-Target-Variant"),
                source_ip=request.remote,
                secure_transport=request.secure,
                user_agent=request.headers.get("User-Agent", ""),
            )
        except ModelError as exc:
            return runtime_error(
                exc, OriginalStatusCode=exc.original_status, OriginalMessage=exc.original_message
            )
        except AwsError as exc:
            # Authentication failures keep their codes; everything else is a ValidationError
            # or carries its own code.
            return runtime_error(exc)
        return web.Response(
            body=invoked.body,
            headers={"Content-Type": invoked.content_type, VARIANT_HEADER: invoked.variant},
        )

    async def invoke(
        self,
        principal: Principal,
        name: str,
        body: bytes,
        *,
        content_type: str,
        accept: str | None = None,
        target_variant: str | None = None,
        source_ip: str | None,
        secure_transport: bool,
        user_agent: str = "",
    ) -> Invoked:
        """InvokeEndpoint for an authenticated principal: the signed request's path and the web
        console's. A refusal, or the model's own error (:class:`ModelError`), raises the
        AwsError a client would receive."""
        call = Call(
            "InvokeEndpoint",
            {
                "EndpointName": name,
                "Body": body,
                "ContentType": content_type,
                "Accept": accept,
                "TargetVariant": target_variant,
            },
            principal,
            RequestFacts(source_ip=source_ip, secure_transport=secure_transport),
        )
        record = ApiCall.begin(
            "sagemaker", source_ip=source_ip, user_agent=user_agent, principal=principal
        )
        try:
            try:
                self._pipeline.authorize(record, self._operation, call)
                invoked: Invoked = await self._operation.run(call)
                return invoked
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                # The endpoint's record is out of reach for a moment: a 503 the SDK retries.
                log.warning(
                    "InvokeEndpoint %s: the database is unavailable: %s", name, driver_message(exc)
                )
                raise ServiceUnavailable(
                    "The service is unavailable for a moment; retry."
                ) from None
        except AwsError as exc:
            record.error = exc
            raise
        finally:
            self._pipeline.finish(record)

    def choose_variant(self, name: str, target: str | None) -> Variant:
        variants = self._deployer.variants(name)
        if variants is None:
            raise ValidationError(
                f"Endpoint {name} of account {self._account} not found or not in service."
            )
        if target is not None and variants:
            variants = [v for v in variants if v.name == target]
            if not variants:
                raise ValidationError(
                    f"Variant {target} is not a serving production variant of endpoint {name}."
                )
        serving = [v for v in variants if any(w.healthy for w in v.instances)]
        weighted = [v for v in serving if v.weight > 0] or serving
        if not weighted:
            raise NoHealthyInstance(f"Endpoint {name} has no healthy instance right now.")
        return random.choices(weighted, weights=[v.weight or 1.0 for v in weighted])[0]

    async def forward(
        self, name: str, variant: Variant, body: bytes, content_type: str, accept: str | None
    ) -> Invoked:
        instance = random.choice([w for w in variant.instances if w.healthy])
        headers = {"Content-Type": content_type}
        if accept is not None:
            headers["Accept"] = accept
        url = instance.url("/invocations")
        status = 503  # what the caller gets when the instance does not answer
        started = time.perf_counter()
        try:
            async with self._deployer.client.post(url, data=body, headers=headers) as resp:
                answer = await resp.read()
                answered_type = resp.headers.get("Content-Type", "application/json")
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            raise InstanceUnreachable(f"Variant {variant.name} did not answer: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise ServiceUnavailable(f"Variant {variant.name} did not answer: {exc}") from exc
        finally:
            self._metrics.request(name, status, time.perf_counter() - started)
        if status >= 400:
            raise ModelError(status, answer.decode(errors="replace"))
        return Invoked(answer, answered_type, variant.name)


_INVOKE_INPUT = (
    load_service_model("sagemaker-runtime").operation_model("InvokeEndpoint").input_shape
)
_VALIDATOR = InputValidator()


def _check_headers(request: web.Request) -> None:
    """The request's header and path members, against InvokeEndpoint's model (lengths,
    patterns): a header that is not ASCII would otherwise reach the model server."""
    document: dict[str, Any] = {"Body": ""}  # the body is checked apart (read_body)
    for name, member in _INVOKE_INPUT.members.items():
        where, key = member.serialization.get("location"), member.serialization.get("name", name)
        # The path has one member, the endpoint's name (the route's {name}).
        value = request.match_info["name"] if where == "uri" else request.headers.get(key)
        if where in ("uri", "header") and value is not None:
            document[name] = value
    try:
        _VALIDATOR.validate(_INVOKE_INPUT, document)
    except AwsError as exc:
        # sagemaker-runtime names its validation error ValidationError.
        raise ValidationError(exc.message) from None
