"""The operation declarations: real operations of their services, each decided for every
managed policy, and the shipped policy documents saying the same."""

from __future__ import annotations

import json
from collections import Counter
from fnmatch import fnmatchcase
from typing import Any

import pytest

from mlfleet.api.operations import MANAGED_POLICIES, Operation
from mlfleet.daemon.operations import OPERATION_TABLES
from mlfleet.iam.managed import POLICY_DIR
from mlfleet.protocol.awsjson import load_service_model

OPERATIONS = [op for table in OPERATION_TABLES for op in table.operations]


def _id(operation: Operation[Any]) -> str:
    return operation.action


def test_every_implemented_operation_is_declared_once() -> None:
    counts = Counter(op.action for op in OPERATIONS)
    assert [action for action, n in counts.items() if n > 1] == []
    assert len(OPERATIONS) > 100


@pytest.mark.parametrize("operation", OPERATIONS, ids=_id)
def test_operation_is_one_of_its_service_model(operation: Operation[Any]) -> None:
    assert operation.name in load_service_model(operation.model).operation_names


def _allows(policy_name: str, action: str) -> bool:
    """Whether the shipped policy allows the action on some resource (none has a Deny)."""
    document = json.loads((POLICY_DIR / f"{policy_name}.json").read_text())["Document"]
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow" and "NotAction" not in statement
        patterns = statement["Action"]
        patterns = [patterns] if isinstance(patterns, str) else patterns
        if any(fnmatchcase(action.lower(), p.lower()) for p in patterns):
            return True
    return False


@pytest.mark.parametrize("operation", OPERATIONS, ids=_id)
def test_managed_policies_grant_what_the_declaration_says(operation: Operation[Any]) -> None:
    if operation.granted_to is None:
        # Only an operation that no policy governs may leave the decision out.
        assert operation.resource is None
        return
    for name in MANAGED_POLICIES:
        allowed = _allows(name, operation.action)
        assert allowed == (name in operation.granted_to), (
            f"{name} {'allows' if allowed else 'does not allow'} {operation.action}, "
            f"but its declaration grants it to {sorted(operation.granted_to)}"
        )
    assert _allows("AdministratorAccess", operation.action)


def test_every_shipped_policy_is_decided_on() -> None:
    shipped = {path.stem for path in POLICY_DIR.glob("*.json")}
    assert shipped == {*MANAGED_POLICIES, "AdministratorAccess"}


def test_read_only_operations_are_reads() -> None:
    for operation in OPERATIONS:
        if operation.access.read_only:
            assert operation.name.startswith(
                ("Describe", "List", "Get", "Lookup", "Simulate", "Test", "Invoke")
            ), operation.action
