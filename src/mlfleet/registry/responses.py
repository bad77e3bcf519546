"""SageMaker's model registry operations at ``POST /`` (AWS JSON 1.1), beside the fleet's.

Each is authorized as ``sagemaker:<Operation>`` on the group's or the package's ARN with its
tags (List* on "*"); creates also present their request tags. CreateModelPackage of a version
is authorized on the ARN the version will get, with its group's tags, so that policies on
``model-package/<group>/*`` and tag locks on the group both hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mlfleet.api.endpoint import Check, Operation
from mlfleet.auth.identity import Principal
from mlfleet.policy.evaluation import ContextValue
from mlfleet.registry.service import ModelRegistry

Handler = Callable[[dict[str, Any], Principal], dict[str, Any]]
CheckFor = Callable[[str, dict[str, Any]], list[Check]]


def registry_operations(registry: ModelRegistry) -> dict[str, Operation]:
    """The model package group and model package operations of SageMaker's API."""

    def create_group_check(action: str, req: dict[str, Any]) -> list[Check]:
        arn = registry.group_arn(req["ModelPackageGroupName"])
        return [Check(action, arn, request_tags=req.get("Tags", []))]

    def group_check(action: str, req: dict[str, Any]) -> list[Check]:
        arn = registry.group_arn(req["ModelPackageGroupName"])
        return [Check(action, arn, resource_tags=registry.group_tags(arn))]

    def package_check(member: str) -> CheckFor:
        def check(action: str, req: dict[str, Any]) -> list[Check]:
            arn = registry.package_arn(req[member])
            tags = registry.package_tags(arn)
            return [Check(action, arn, resource_tags=tags, extra=_condition_keys(req))]

        return check

    def create_package_check(action: str, req: dict[str, Any]) -> list[Check]:
        group = req.get("ModelPackageGroupName")
        if group is not None:
            arn = registry.next_package_arn(group)
            tags = registry.group_tags(registry.group_arn(group))
        elif "ModelPackageName" in req:
            arn, tags = registry.package_arn(req["ModelPackageName"]), []
        else:  # refused by the operation itself, with the reason
            arn, tags = "*", []
        return [
            Check(
                action,
                arn,
                resource_tags=tags,
                request_tags=req.get("Tags", []),
                extra=_condition_keys(req),
            )
        ]

    def anything(action: str, _req: dict[str, Any]) -> list[Check]:
        return [Check(action, "*")]

    table: dict[str, tuple[Handler, CheckFor]] = {
        "CreateModelPackageGroup": (registry.create_group, create_group_check),
        "DescribeModelPackageGroup": (lambda req, _p: registry.describe_group(req), group_check),
        "ListModelPackageGroups": (lambda req, _p: registry.list_groups(req), anything),
        "DeleteModelPackageGroup": (lambda req, _p: registry.delete_group(req), group_check),
        "CreateModelPackage": (registry.create_package, create_package_check),
        "DescribeModelPackage": (
            lambda req, _p: registry.describe_package(req),
            package_check("ModelPackageName"),
        ),
        "ListModelPackages": (lambda req, _p: registry.list_packages(req), anything),
        "UpdateModelPackage": (registry.update_package, package_check("ModelPackageArn")),
        "DeleteModelPackage": (
            lambda req, _p: registry.delete_package(req),
            package_check("ModelPackageName"),
        ),
    }
    return {name: _operation(f"sagemaker:{name}", *entry) for name, entry in table.items()}


def _operation(action: str, handler: Handler, check: CheckFor) -> Operation:
    return Operation(
        run=lambda req, principal, _facts: handler(req, principal),
        checks=lambda req, _principal: check(action, req),
    )


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
