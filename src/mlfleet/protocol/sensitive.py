"""Secrets in what the audit trail keeps: every member a service model marks sensitive.

botocore's models flag passwords, secret keys, API key values and the like as ``sensitive``;
the audit trail shows them as CloudTrail does, ``HIDDEN_DUE_TO_SECURITY_REASONS``, in a call's
parameters, its answer, and the text of a validation error that echoes a value back.
"""

from __future__ import annotations

import re
from typing import Any

from botocore.model import Shape

from mlfleet.protocol.errors import AwsError

HIDDEN = "HIDDEN_DUE_TO_SECURITY_REASONS"
_ECHOED_VALUE = re.compile(r"Value '(?P<value>.*?)' at '(?P<path>[\w.]+)' failed", re.DOTALL)


def without_secrets(shape: Shape, value: Any) -> Any:
    """`value` with the members `shape` marks sensitive replaced by HIDDEN."""
    if shape.metadata.get("sensitive"):
        return HIDDEN
    if shape.type_name == "structure" and isinstance(value, dict):
        members = shape.members
        return {k: without_secrets(members[k], v) if k in members else v for k, v in value.items()}
    if shape.type_name == "list" and isinstance(value, list):
        return [without_secrets(shape.member, item) for item in value]
    if shape.type_name == "map" and isinstance(value, dict):
        return {k: without_secrets(shape.value, v) for k, v in value.items()}
    return value


def error_without_secrets(error: AwsError, shape: Shape) -> AwsError:
    """The error, minus sensitive values a validation message echoes back."""
    names = _sensitive_names(shape)
    if not names:
        return error

    def hide(match: re.Match[str]) -> str:
        if match["path"].rsplit(".", 1)[-1] not in names:
            return match[0]
        return f"Value '{HIDDEN}' at '{match['path']}' failed"

    return AwsError(error.code, _ECHOED_VALUE.sub(hide, error.message), error.status)


def _sensitive_names(shape: Shape, seen: frozenset[str] = frozenset()) -> set[str]:
    """The wire names (as validation messages spell them) of sensitive members under `shape`."""
    if shape.name in seen:
        return set()
    seen = seen | {shape.name}
    if shape.type_name == "list":
        return _sensitive_names(shape.member, seen)
    if shape.type_name == "map":
        return _sensitive_names(shape.value, seen)
    names: set[str] = set()
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            if member.metadata.get("sensitive"):
                names.add(name[:1].lower() + name[1:])
            names |= _sensitive_names(member, seen)
    return names
