"""Role trust policies: who may assume a role (the resource policy that ``sts:AssumeRole`` reads).

A trust statement is an identity-policy statement plus a ``Principal`` and minus ``Resource``
(the role is the resource). The statement body is compiled by :mod:`mlfleet.policy.evaluation`, so
actions and conditions mean exactly what they mean elsewhere; only principal matching is here.

IAM's rule for a caller of the role's own account: a trust policy that names the caller's ARN
is enough on its own; one that trusts the account (``arn:aws:iam::<account>:root``, the bare
account id, or ``*``) also needs an identity policy of the caller that allows ``sts:AssumeRole``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mlfleet.policy.evaluation import (
    Decision,
    MalformedPolicyDocument,
    Policy,
    RequestContext,
    evaluate,
    parse_policy,
)
from mlfleet.protocol import jsontext

_PRINCIPAL_TYPES = frozenset({"AWS", "Service", "Federated", "CanonicalUser"})


class Trust(enum.Enum):
    NAMED = "named"  # the caller's ARN is in the policy: no identity policy needed
    ACCOUNT = "account"  # trusted through its account: the identity policy must allow too
    NONE = "none"


@dataclass(frozen=True)
class _TrustStatement:
    principals: tuple[str, ...]  # the AWS principals; "*" for everyone
    negated: bool  # NotPrincipal
    body: Policy  # Effect, Action, Condition compiled with Resource "*"


@dataclass(frozen=True)
class TrustPolicy:
    statements: tuple[_TrustStatement, ...]

    def trusts(self, ctx: RequestContext, caller_arns: tuple[str, ...], account: str) -> Trust:
        """How the caller (its ARNs: the user, or the role and its session) is trusted."""
        result = Trust.NONE
        for statement in self.statements:
            match = _principal_match(statement, caller_arns, account)
            if match is Trust.NONE:
                continue
            decision = evaluate([("trust", statement.body)], ctx).decision
            if decision is Decision.EXPLICIT_DENY:
                return Trust.NONE
            if decision is Decision.ALLOW and (result is Trust.NONE or match is Trust.NAMED):
                result = match
        return result


def _principal_match(statement: _TrustStatement, arns: tuple[str, ...], account: str) -> Trust:
    account_forms = {account, f"arn:aws:iam::{account}:root"}
    if any(p == "*" for p in statement.principals):
        found = Trust.ACCOUNT
    elif any(p in arns for p in statement.principals):
        found = Trust.NAMED
    elif any(p in account_forms for p in statement.principals):
        found = Trust.ACCOUNT
    else:
        found = Trust.NONE
    if statement.negated:
        return Trust.NONE if found is not Trust.NONE else Trust.ACCOUNT
    return found


def _principals(value: Any, element: str) -> tuple[str, ...]:
    if value == "*":
        return ("*",)
    if not isinstance(value, Mapping) or not value:
        raise MalformedPolicyDocument(
            f'{element} must be "*" or an object such as {{"AWS": "<arn>"}}.'
        )
    found: list[str] = []
    for kind, entries in value.items():
        if kind not in _PRINCIPAL_TYPES:
            raise MalformedPolicyDocument(f'Invalid principal type "{kind}" in {element}.')
        values = [entries] if isinstance(entries, str) else entries
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise MalformedPolicyDocument(
                f"{element}.{kind} must be a string or a list of strings."
            )
        if kind == "AWS":
            for entry in values:
                if entry != "*" and not entry.isdigit() and not entry.startswith("arn:"):
                    raise MalformedPolicyDocument(f'Invalid principal in policy: "AWS":"{entry}"')
            found += values
        # Service, federated and canonical principals never call as an mlfleet identity.
    return tuple(found)


@lru_cache(maxsize=1024)
def parse_trust(document: str) -> TrustPolicy:
    """Validate and compile a trust policy; MalformedPolicyDocument says what is wrong."""
    try:
        raw = jsontext.loads(document)
    except ValueError as exc:
        raise MalformedPolicyDocument(f"Syntax errors in policy: {exc}.") from None
    if not isinstance(raw, Mapping):
        raise MalformedPolicyDocument(
            "Syntax errors in policy: the document must be a JSON object."
        )
    listed = raw.get("Statement")
    statements_raw = [listed] if isinstance(listed, Mapping) else listed
    if not isinstance(statements_raw, list) or not statements_raw:
        raise MalformedPolicyDocument("Syntax errors in policy: Statement is required.")
    statements = []
    for number, statement in enumerate(statements_raw, start=1):
        if not isinstance(statement, Mapping):
            raise MalformedPolicyDocument(f"Statement {number}: a statement must be a JSON object.")
        present = [key for key in ("Principal", "NotPrincipal") if key in statement]
        if len(present) != 1:
            raise MalformedPolicyDocument(
                "AssumeRolepolicy contained an invalid principal element."
            )
        if "Resource" in statement or "NotResource" in statement:
            raise MalformedPolicyDocument("Has prohibited field Resource.")
        body = {k: v for k, v in statement.items() if k not in present}
        compiled = parse_policy(
            {k: v for k, v in raw.items() if k != "Statement"}
            | {"Statement": [{**body, "Resource": "*"}]}
        )
        statements.append(
            _TrustStatement(
                _principals(statement[present[0]], present[0]),
                present[0] == "NotPrincipal",
                compiled,
            )
        )
    return TrustPolicy(tuple(statements))
