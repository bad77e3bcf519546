"""SageMaker's model registry operations at ``POST /`` (AWS JSON 1.1), beside the fleet's.

Each is authorized as ``sagemaker:<Operation>`` on the group's or the package's ARN with its
tags (List* on "*"); creates also present their request tags. CreateModelPackage of a version
is authorized on the ARN the version will get, with its group's tags, so that policies on
``model-package/<group>/*`` and tag locks on the group both hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mlfleet.api.operations import (
    OPERATORS,
    READERS,
    Access,
    Call,
    OperationTable,
    Result,
    Target,
    anywhere,
)
from mlfleet.policy.evaluation import ContextValue
from mlfleet.protocol.shapes import sagemaker as shapes
from mlfleet.registry.service import ModelRegistry

GROUP_TYPE = "AWS::SageMaker::ModelPackageGroup"
PACKAGE_TYPE = "AWS::SageMaker::ModelPackage"
OPERATIONS: OperationTable[ModelRegistry] = OperationTable("sagemaker")
declare = OPERATIONS.declare


def _new_group(registry: ModelRegistry, call: Call[Any]) -> Target:
    arn = registry.group_arn(call.params["ModelPackageGroupName"])
    return Target(arn, request_tags=call.params.get("Tags", []))


def _group(registry: ModelRegistry, call: Call[Any]) -> Target:
    arn = registry.group_arn(call.params["ModelPackageGroupName"])
    return Target(arn, registry.group_tags(arn))


def _package_named_by(member: str) -> Callable[[ModelRegistry, Call[Any]], Target]:
    def locate(registry: ModelRegistry, call: Call[Any]) -> Target:
        arn = registry.package_arn(call.params[member])
        return Target(arn, registry.package_tags(arn), keys=_condition_keys(call.params))

    return locate


def _new_package(registry: ModelRegistry, call: Call[Any]) -> Target:
    req = call.params
    group = req.get("ModelPackageGroupName")
    if group is not None:
        arn = registry.next_package_arn(group)
        tags = registry.group_tags(registry.group_arn(group))
    elif "ModelPackageName" in req:
        arn, tags = registry.package_arn(req["ModelPackageName"]), []
    else:  # refused by the operation itself, with the reason
        arn, tags = "*", []
    return Target(arn, tags, request_tags=req.get("Tags", []), keys=_condition_keys(req))


@declare(Access.WRITE, OPERATORS, resource=_new_group, resource_type=GROUP_TYPE)
def create_model_package_group(
    registry: ModelRegistry, call: Call[shapes.CreateModelPackageGroupInput]
) -> shapes.CreateModelPackageGroupOutput:
    return registry.create_group(call.params, call.principal)


@declare(Access.READ, READERS, resource=_group, resource_type=GROUP_TYPE)
def describe_model_package_group(
    registry: ModelRegistry, call: Call[shapes.DescribeModelPackageGroupInput]
) -> shapes.DescribeModelPackageGroupOutput:
    return registry.describe_group(call.params)


@declare(Access.LIST, READERS, resource=anywhere)
def list_model_package_groups(
    registry: ModelRegistry, call: Call[shapes.ListModelPackageGroupsInput]
) -> shapes.ListModelPackageGroupsOutput:
    return registry.list_groups(call.params)


@declare(Access.WRITE, OPERATORS, resource=_group, resource_type=GROUP_TYPE)
def delete_model_package_group(
    registry: ModelRegistry, call: Call[shapes.DeleteModelPackageGroupInput]
) -> Result:
    return registry.delete_group(call.params)


@declare(Access.WRITE, OPERATORS, resource=_new_package, resource_type=PACKAGE_TYPE)
def create_model_package(
    registry: ModelRegistry, call: Call[shapes.CreateModelPackageInput]
) -> shapes.CreateModelPackageOutput:
    return registry.create_package(call.params, call.principal)


@declare(
    Access.READ,
    READERS,
    resource=_package_named_by("ModelPackageName"),
    resource_type=PACKAGE_TYPE,
)
def describe_model_package(
    registry: ModelRegistry, call: Call[shapes.DescribeModelPackageInput]
) -> shapes.DescribeModelPackageOutput:
    return registry.describe_package(call.params)


@declare(Access.LIST, READERS, resource=anywhere)
def list_model_packages(
    registry: ModelRegistry, call: Call[shapes.ListModelPackagesInput]
) -> shapes.ListModelPackagesOutput:
    return registry.list_packages(call.params)


@declare(
    Access.WRITE,
    OPERATORS,
    resource=_package_named_by("ModelPackageArn"),
    resource_type=PACKAGE_TYPE,
)
def update_model_package(
    registry: ModelRegistry, call: Call[shapes.UpdateModelPackageInput]
) -> shapes.UpdateModelPackageOutput:
    return registry.update_package(call.params, call.principal)


@declare(
    Access.WRITE,
    OPERATORS,
    resource=_package_named_by("ModelPackageName"),
    resource_type=PACKAGE_TYPE,
)
def delete_model_package(
    registry: ModelRegistry, call: Call[shapes.DeleteModelPackageInput]
) -> Result:
    return registry.delete_package(call.params)


def _condition_keys(req: Mapping[str, Any]) -> dict[str, ContextValue]:
    """SageMaker's condition keys on model packages that the request sets (documented for tag
    locks and lifecycle rules on Create/UpdateModelPackage)."""
    keys: dict[str, ContextValue] = {}
    if "ModelApprovalStatus" in req:
        keys["sagemaker:ModelApprovalStatus"] = req["ModelApprovalStatus"]
    lifecycle = req.get("ModelLifeCycle")
    if lifecycle is not None:
        keys["sagemaker:ModelLifeCycle/stage"] = lifecycle["Stage"]
        keys["sagemaker:ModelLifeCycle/stageStatus"] = lifecycle["StageStatus"]
    return keys
