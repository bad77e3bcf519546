"""Deployment: SageMaker models, endpoint configs and endpoints.

Each public operation method takes the operation's validated request and returns its output
members (``mlfleet.deploy.responses`` serializes them). A model names an MLflow model version
on one tracking server, either through an approved model package or, as an mlfleet extension,
directly by its ``models:/`` URI. Creating or deleting an endpoint only records what is wanted
and asks the deployer (``mlfleet.deploy.deployer``) to make the scoring processes match it.

ARNs hold names lowercased, as SageMaker writes them, so names are unique regardless of case.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.common.paging import SAGEMAKER, page_of_query
from mlfleet.common.time import when
from mlfleet.events.bus import Publish
from mlfleet.events.sources import endpoint_event
from mlfleet.protocol.errors import ValidationException
from mlfleet.protocol.shapes import sagemaker as shapes
from mlfleet.registry.service import ModelRegistry
from mlfleet.settings import Settings
from mlfleet.state.models import Endpoint, EndpointConfig, SageMakerModel, TrackingServer

Output = dict[str, Any]
# CreateModel's tag that lets a package that is not Approved deploy anyway (documented).
ALLOW_UNAPPROVED_TAG = "mlfleet:allow-unapproved"
# The mlfleet extension for a model without a package: ModelDataUrl = "models:/<name>/<ver>"
# and this variable in Environment naming the tracking server that holds it.
TRACKING_SERVER_ENV = "MLFLEET_TRACKING_SERVER"
SERVER_ARN_PROPERTY = "mlflow.tracking_server_arn"
DELETING = "Deleting"
Row = TypeVar("Row", SageMakerModel, EndpointConfig, Endpoint)
Summary = TypeVar("Summary")


def _now() -> float:
    return round(time.time(), 3)


def _without_none(members: Mapping[str, Any]) -> Output:
    return {name: value for name, value in members.items() if value is not None}


class Deployments:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        registry: ModelRegistry,
        kick: Callable[[str], None],
        publish: Publish,
    ) -> None:
        self._prefix = f"arn:aws:sagemaker:{settings.region}:{settings.account_id}:"
        self._account = settings.account_id
        self._sessions = sessions
        self._registry = registry
        # Asks the deployer to bring an endpoint's processes in line with its row.
        self._kick = kick
        # Status changes are events, stored in the transaction that makes the change.
        self._publish = publish

    def arn(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}/{name.lower()}"

    def tags(self, model: type[SageMakerModel | EndpointConfig | Endpoint], arn: str) -> Any:
        """A resource's tags (aws:ResourceTag/...); none for one that does not exist."""
        with self._sessions() as session:
            return list(session.scalar(select(model.tags).where(model.arn == arn)) or [])

    # models ------------------------------------------------------------------------------------

    def create_model(self, req: shapes.CreateModelInput) -> shapes.CreateModelOutput:
        name = req["ModelName"]
        containers = req.get("Containers") or []
        container = req.get("PrimaryContainer") or (containers[0] if containers else None)
        if container is None or len(containers) > 1:
            raise ValidationException(
                "mlfleet deploys one container per model: give PrimaryContainer (or exactly one "
                "entry in Containers)."
            )
        model_uri, server = self._resolve(container, req.get("Tags", []))
        arn = self.arn("model", name)
        try:
            with self._sessions.begin() as session:
                session.add(
                    SageMakerModel(
                        name=name,
                        arn=arn,
                        primary_container=container,
                        execution_role_arn=req.get("ExecutionRoleArn"),
                        model_uri=model_uri,
                        tracking_server_name=server,
                        created_at=_now(),
                        tags=req.get("Tags", []),
                    )
                )
        except IntegrityError:
            raise ValidationException(f'Cannot create already existing model "{arn}".') from None
        return {"ModelArn": arn}

    def _resolve(
        self, container: Mapping[str, Any], tags: Sequence[Mapping[str, Any]]
    ) -> tuple[str, str]:
        """The MLflow model URI and tracking server name a container deploys."""
        if "ModelPackageName" in container:
            package = self._approved(container["ModelPackageName"], tags)
            uri = package.get("SourceUri", "")
            server_arn = package.get("CustomerMetadataProperties", {}).get(SERVER_ARN_PROPERTY)
            if not uri.startswith("models:/") or not server_arn:
                raise ValidationException(
                    f"Model package {package['ModelPackageArn']} does not point at an MLflow "
                    f"model: it needs SourceUri models:/<name>/<version> and the customer "
                    f"metadata property {SERVER_ARN_PROPERTY} (automatic registration sets both)."
                )
            server = server_arn.rsplit("/", 1)[-1]
        else:
            uri = container.get("ModelDataUrl", "")
            server = container.get("Environment", {}).get(TRACKING_SERVER_ENV, "")
            if not uri.startswith("models:/") or not server:
                raise ValidationException(
                    "A container needs ModelPackageName (a model package of an MLflow model) or "
                    f"ModelDataUrl models:/<name>/<version> with Environment {TRACKING_SERVER_ENV}"
                    " naming the tracking server that holds it."
                )
        with self._sessions() as session:
            if session.scalar(select(TrackingServer.id).where(TrackingServer.name == server)):
                return uri, server
        raise ValidationException(f"Tracking server {server} of model {uri} does not exist.")

    def _approved(
        self, package_ref: str, tags: Sequence[Mapping[str, Any]]
    ) -> shapes.DescribeModelPackageOutput:
        """The package, if it may deploy: Approved, or the model carries the override tag."""
        package = self._registry.package(package_ref)
        approval = package.get("ModelApprovalStatus")
        allowed = any(
            t["Key"] == ALLOW_UNAPPROVED_TAG and t["Value"].lower() == "true" for t in tags
        )
        if approval != "Approved" and not allowed:
            raise ValidationException(
                f"Model package {package['ModelPackageArn']} has ModelApprovalStatus "
                f"{approval}: only Approved packages deploy (approve it with "
                f"UpdateModelPackage, or tag the model {ALLOW_UNAPPROVED_TAG}=true)."
            )
        return package

    def describe_model(self, req: shapes.DescribeModelInput) -> shapes.DescribeModelOutput:
        with self._sessions() as session:
            row = self._get(session, SageMakerModel, "model", "model", req["ModelName"])
            # Without its None members, the dict is the shape: primary_container holds the
            # ContainerDefinition CreateModel was given.
            return cast(
                shapes.DescribeModelOutput,
                _without_none(
                    {
                        "ModelName": row.name,
                        "ModelArn": row.arn,
                        "PrimaryContainer": row.primary_container,
                        "ExecutionRoleArn": row.execution_role_arn,
                        "CreationTime": when(row.created_at),
                    }
                ),
            )

    def delete_model(self, req: shapes.DeleteModelInput) -> Output:
        with self._sessions.begin() as session:
            session.delete(self._get(session, SageMakerModel, "model", "model", req["ModelName"]))
        return {}

    # endpoint configs ----------------------------------------------------------------------------

    def create_endpoint_config(
        self, req: shapes.CreateEndpointConfigInput
    ) -> shapes.CreateEndpointConfigOutput:
        name = req["EndpointConfigName"]
        variants = req["ProductionVariants"]
        names = [v["VariantName"] for v in variants]
        if len(set(names)) != len(names):
            raise ValidationException("VariantName must be unique within an endpoint config.")
        for variant in variants:
            if "ModelName" not in variant or "ServerlessConfig" in variant:
                raise ValidationException(
                    f"Variant {variant['VariantName']}: mlfleet serves instance-based variants; "
                    "give ModelName and InitialInstanceCount (ServerlessConfig is not supported)."
                )
        arn = self.arn("endpoint-config", name)
        with self._sessions.begin() as session:
            for variant in variants:
                self._get(session, SageMakerModel, "model", "model", variant["ModelName"])
            try:
                session.add(
                    EndpointConfig(
                        name=name,
                        arn=arn,
                        production_variants=variants,
                        created_at=_now(),
                        tags=req.get("Tags", []),
                    )
                )
                session.flush()
            except IntegrityError:
                raise ValidationException(
                    f'Cannot create already existing endpoint configuration "{arn}".'
                ) from None
        return {"EndpointConfigArn": arn}

    def describe_endpoint_config(
        self, req: shapes.DescribeEndpointConfigInput
    ) -> shapes.DescribeEndpointConfigOutput:
        with self._sessions() as session:
            row = self._config(session, req["EndpointConfigName"])
            # The column holds the ProductionVariants CreateEndpointConfig was given.
            variants = cast(list[shapes.ProductionVariant], row.production_variants)
            return {
                "EndpointConfigName": row.name,
                "EndpointConfigArn": row.arn,
                "ProductionVariants": variants,
                "CreationTime": when(row.created_at),
            }

    def delete_endpoint_config(self, req: shapes.DeleteEndpointConfigInput) -> Output:
        with self._sessions.begin() as session:
            session.delete(self._config(session, req["EndpointConfigName"]))
        return {}

    def _config(self, session: Session, name: str) -> EndpointConfig:
        return self._get(session, EndpointConfig, "endpoint-config", "endpoint configuration", name)

    # endpoints ---------------------------------------------------------------------------------

    def create_endpoint(self, req: shapes.CreateEndpointInput) -> shapes.CreateEndpointOutput:
        name = req["EndpointName"]
        arn = self.arn("endpoint", name)
        with self._sessions.begin() as session:
            config = self._config(session, req["EndpointConfigName"])
            variants = self._variants(session, config)
            now = _now()
            try:
                session.add(
                    Endpoint(
                        name=name,
                        arn=arn,
                        config_name=config.name,
                        variants=variants,
                        status="Creating",
                        created_at=now,
                        last_modified_at=now,
                        tags=req.get("Tags", []),
                    )
                )
                session.flush()
            except IntegrityError:
                raise ValidationException(
                    f'Cannot create already existing endpoint "{arn}".'
                ) from None
            self.announce(session, name)
        self._kick(name)
        return {"EndpointArn": arn}

    def _variants(self, session: Session, config: EndpointConfig) -> list[dict[str, Any]]:
        """What an endpoint serves of `config`, resolved now: later changes to the config's
        models do not reach a running endpoint."""
        variants = []
        for variant in config.production_variants:
            model = self._get(session, SageMakerModel, "model", "model", variant["ModelName"])
            if "ModelPackageName" in model.primary_container:
                # Checked again at each deployment: a package rejected since CreateModel must
                # not reach an endpoint.
                self._approved(model.primary_container["ModelPackageName"], model.tags)
            variants.append(
                {
                    "VariantName": variant["VariantName"],
                    "ModelUri": model.model_uri,
                    "TrackingServerName": model.tracking_server_name,
                    "InstanceCount": variant.get("InitialInstanceCount", 1),
                    "Weight": variant.get("InitialVariantWeight", 1.0),
                }
            )
        return variants

    def update_endpoint(self, req: shapes.UpdateEndpointInput) -> shapes.UpdateEndpointOutput:
        """Switch an endpoint to another config: its instances start beside the running ones,
        which keep serving until every new instance does (the deployer swaps them)."""
        with self._sessions.begin() as session:
            row = self._endpoint(session, req["EndpointName"])
            if row.status != "InService":
                raise ValidationException(
                    f'Cannot update in-progress endpoint "{row.arn}".'
                    if row.status in ("Creating", "Updating", DELETING)
                    else f'Cannot update endpoint "{row.arn}" in status {row.status}: only an '
                    "InService endpoint can be updated."
                )
            config = self._config(session, req["EndpointConfigName"])
            if config.name == row.config_name:
                raise ValidationException(
                    f'Endpoint "{row.arn}" already runs endpoint config {config.name}: '
                    "update it to a new one."
                )
            row.pending_variants = self._variants(session, config)
            row.pending_config_name = config.name
            row.status, row.failure_reason, row.last_modified_at = "Updating", None, _now()
            name, arn = row.name, row.arn
            session.flush()
            self.announce(session, name)
        self._kick(name)
        return {"EndpointArn": arn}

    def describe_endpoint(self, req: shapes.DescribeEndpointInput) -> shapes.DescribeEndpointOutput:
        with self._sessions() as session:
            return self._description(self._endpoint(session, req["EndpointName"]))

    def announce(self, session: Session, name: str) -> None:
        """Publish an endpoint's state, as `session` sees it, in `session`'s transaction."""
        row = self._endpoint(session, name)
        self._publish([endpoint_event(self._description(row))], session)

    def _description(self, row: Endpoint) -> shapes.DescribeEndpointOutput:
        # Without its None members (FailureReason, when nothing failed), the dict is the shape.
        return cast(
            shapes.DescribeEndpointOutput,
            _without_none(
                {
                    **self._endpoint_summary(row),
                    "EndpointConfigName": row.config_name,
                    "FailureReason": row.failure_reason,
                    "ProductionVariants": [
                        {
                            "VariantName": v["VariantName"],
                            "CurrentWeight": v["Weight"],
                            "DesiredWeight": v["Weight"],
                            "CurrentInstanceCount": v["InstanceCount"]
                            if row.status == "InService"
                            else 0,
                            "DesiredInstanceCount": v["InstanceCount"],
                        }
                        for v in row.variants
                    ],
                }
            ),
        )

    def list_endpoints(self, req: shapes.ListEndpointsInput) -> shapes.ListEndpointsOutput:
        query = select(Endpoint)
        if "StatusEquals" in req:
            query = query.where(Endpoint.status == req["StatusEquals"])
        members: Mapping[str, Any] = req
        for member, after in (("LastModifiedTimeAfter", True), ("LastModifiedTimeBefore", False)):
            if member in members:
                bound = members[member].timestamp()
                column = Endpoint.last_modified_at
                query = query.where(column > bound if after else column < bound)
        page, token = self._list(query, Endpoint, req, self._endpoint_summary)
        return {"Endpoints": page} if token is None else {"Endpoints": page, "NextToken": token}

    def list_models(self, req: shapes.ListModelsInput) -> shapes.ListModelsOutput:
        def summary(row: SageMakerModel) -> shapes.ModelSummary:
            return {
                "ModelName": row.name,
                "ModelArn": row.arn,
                "CreationTime": when(row.created_at),
            }

        page, token = self._list(select(SageMakerModel), SageMakerModel, req, summary)
        return {"Models": page} if token is None else {"Models": page, "NextToken": token}

    def list_endpoint_configs(
        self, req: shapes.ListEndpointConfigsInput
    ) -> shapes.ListEndpointConfigsOutput:
        def summary(row: EndpointConfig) -> shapes.EndpointConfigSummary:
            return {
                "EndpointConfigName": row.name,
                "EndpointConfigArn": row.arn,
                "CreationTime": when(row.created_at),
            }

        page, token = self._list(select(EndpointConfig), EndpointConfig, req, summary)
        if token is None:
            return {"EndpointConfigs": page}
        return {"EndpointConfigs": page, "NextToken": token}

    def _list(
        self,
        query: Select[Any],
        model: type[Row],
        req: Mapping[str, Any],
        summarize: Callable[[Any], Summary],
    ) -> tuple[list[Summary], str | None]:
        """What the three List operations share: NameContains, the creation-time window,
        SortBy (Name, CreationTime; Status for endpoints), SortOrder (newest first by default)
        and paging: the page of summaries, and the NextToken of the next page (None on the
        last)."""
        if "NameContains" in req:
            query = query.where(model.name.contains(req["NameContains"], autoescape=True))
        if "CreationTimeAfter" in req:
            query = query.where(model.created_at > req["CreationTimeAfter"].timestamp())
        if "CreationTimeBefore" in req:
            query = query.where(model.created_at < req["CreationTimeBefore"].timestamp())
        sort = req.get("SortBy", "CreationTime")
        column = (
            model.name
            if sort == "Name"
            else Endpoint.status
            if sort == "Status" and model is Endpoint
            else model.created_at
        )
        descending = req.get("SortOrder", "Descending") == "Descending"
        query = query.order_by(column.desc() if descending else column.asc(), model.name)
        return page_of_query(self._sessions, query, req, SAGEMAKER, summarize)

    def delete_endpoint(self, req: shapes.DeleteEndpointInput) -> Output:
        with self._sessions.begin() as session:
            row = self._endpoint(session, req["EndpointName"])
            row.status, row.last_modified_at = DELETING, _now()
            name = row.name
            session.flush()
            self.announce(session, name)
        self._kick(name)
        return {}

    @staticmethod
    def _endpoint_summary(row: Endpoint) -> shapes.EndpointSummary:
        return {
            "EndpointName": row.name,
            "EndpointArn": row.arn,
            "CreationTime": when(row.created_at),
            "LastModifiedTime": when(row.last_modified_at),
            "EndpointStatus": row.status,
        }

    def _endpoint(self, session: Session, name: str) -> Endpoint:
        return self._get(session, Endpoint, "endpoint", "endpoint", name)

    def _get(self, session: Session, model: type[Row], kind: str, noun: str, name: str) -> Row:
        arn = self.arn(kind, name)
        row = session.scalar(select(model).where(model.arn == arn))
        if row is None:
            # SageMaker's wording; waiters treat this ValidationException as "deleted".
            raise ValidationException(f'Could not find {noun} "{arn}".')
        return row
