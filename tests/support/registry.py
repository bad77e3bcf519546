"""The model registry for tests: model package groups and versions."""

from __future__ import annotations

from typing import Any

from support.aws import unique


def new_group(sm: Any, **kwargs: Any) -> str:
    name = unique("Group")
    sm.create_model_package_group(ModelPackageGroupName=name, **kwargs)
    return name


def new_versions(sm: Any, group: str, count: int, **kwargs: Any) -> list[str]:
    return [
        sm.create_model_package(ModelPackageGroupName=group, **kwargs)["ModelPackageArn"]
        for _ in range(count)
    ]
