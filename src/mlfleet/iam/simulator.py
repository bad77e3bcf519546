"""SimulatePrincipalPolicy: the decision the authorizer would take, with the statements behind it.

It runs the very evaluation the control plane and the gateway run, against the principal's
policies plus any given in PolicyInputList, within its permissions boundary (or the one given in
PermissionsBoundaryPolicyInputList, which takes its place), so what it says is what mlfleet does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from mlfleet.auth.identity import Principal
from mlfleet.iam.store import IamStore, InvalidInput, truncated
from mlfleet.policy.authorizer import Authorizer, RequestFacts, SourcedPolicy
from mlfleet.policy.evaluation import ContextScalar, ContextValue, PolicyKind, parse_policy
from mlfleet.protocol.shapes import iam as shapes

_CONVERTERS: dict[str, Callable[[str], ContextScalar]] = {
    "string": str,
    "numeric": float,
    "boolean": lambda text: text.lower() == "true",
    "ip": lambda text: str(ipaddress.ip_network(text, strict=False).network_address),
    "binary": str,
    "date": lambda text: datetime.fromisoformat(text.replace("Z", "+00:00")),
}


class Simulator:
    def __init__(self, store: IamStore, authorizer: Authorizer, account_id: str) -> None:
        self._store = store
        self._authorizer = authorizer
        self._account = account_id

    def simulate_principal_policy(
        self, req: shapes.SimulatePrincipalPolicyRequest
    ) -> shapes.SimulatePolicyResponse:
        principal, policies, boundary = self._source(req["PolicySourceArn"])
        policies += _inputs(req, "PolicyInputList")
        if "PermissionsBoundaryPolicyInputList" in req:
            boundary = _inputs(req, "PermissionsBoundaryPolicyInputList")
        facts = RequestFacts(extra=_context(req.get("ContextEntries", [])))
        results: list[shapes.EvaluationResult] = []
        for action in req["ActionNames"]:
            for resource in req.get("ResourceArns", ["*"]):
                result = self._authorizer.simulate(
                    principal, policies, boundary, action, resource, facts
                )
                matched: list[shapes.Statement] = [
                    {"SourcePolicyId": p.source_id, "SourcePolicyType": p.source_type}
                    for p in (boundary if result.kind is PolicyKind.BOUNDARY else policies)
                    if p.source_id == result.policy_name
                ]
                evaluation: shapes.EvaluationResult = {
                    "EvalActionName": action,
                    "EvalResourceName": resource,
                    "EvalDecision": result.decision.value,
                    "MatchedStatements": matched[:1],
                    "MissingContextValues": [],
                }
                if result.allowed_by_boundary is not None:
                    evaluation["PermissionsBoundaryDecisionDetail"] = {
                        "AllowedByPermissionsBoundary": result.allowed_by_boundary
                    }
                results.append(evaluation)
        numbered = [(f"{n:08d}", result) for n, result in enumerate(results)]
        page, more = truncated(numbered, req, lambda pair: pair[0])
        return {"EvaluationResults": [pair[1] for pair in page], **more}

    def _source(self, arn: str) -> tuple[Principal, list[SourcedPolicy], list[SourcedPolicy]]:
        prefix = f"arn:aws:iam::{self._account}:"
        kind, _, rest = (
            arn[len(prefix) :].partition("/") if arn.startswith(prefix) else ("", "", "")
        )
        name = rest.rsplit("/", 1)[-1]
        if kind == "user":
            user = self._store.user_record(name)
            principal = Principal(user.arn, user.user_id, user.name)
        elif kind == "role":
            role = self._store.role_record(name)
            principal = Principal(
                f"arn:aws:sts::{self._account}:assumed-role/{role.name}/simulation",
                f"{role.role_id}:simulation",
                role.name,
                kind="role",
                identity_arn=role.arn,
            )
        elif kind == "group":
            # A group is simulated as a member with no policies of its own would be.
            group = self._store.get_group({"GroupName": name})["Group"]
            principal = Principal(group["Arn"], group["GroupId"], name, kind="group")
        else:
            raise InvalidInput(
                f"Invalid PolicySourceArn {arn}: expected a user, group or role of this account."
            )
        return principal, self._store.policies_of(kind, name), self._store.boundary_of(kind, name)


def _inputs(req: Mapping[str, Any], member: str) -> list[SourcedPolicy]:
    return [
        SourcedPolicy(f"{member}.{n}", "none", parse_policy(document))
        for n, document in enumerate(req.get(member, []), start=1)
    ]


def _context(entries: Iterable[shapes.ContextEntry]) -> dict[str, ContextValue]:
    context: dict[str, ContextValue] = {}
    for entry in entries:
        kind = entry.get("ContextKeyType", "string")
        convert = _CONVERTERS[kind.removesuffix("List")]
        try:
            values = [convert(v) for v in entry.get("ContextKeyValues", [])]
        except ValueError as exc:
            raise InvalidInput(
                f"ContextKeyValues of {entry.get('ContextKeyName')} are not {kind}: {exc}"
            ) from None
        name = entry["ContextKeyName"]
        context[name] = values if kind.endswith("List") else (values[0] if values else [])
    return context
