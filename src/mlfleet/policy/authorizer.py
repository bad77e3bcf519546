"""Authorization: may this principal perform this action on this resource, in this request?

Every control-plane operation and every MLflow request through the gateway asks here. The
principal's policies (its own, its groups', or its role's) and its permissions boundary (its own,
or its role's) are loaded once and kept compiled;
whole decisions are cached per (principal, action, resource, source address, transport, resource
tags) unless a policy depends on the clock. Both caches are dropped on every IAM change, so a
revoked permission is revoked at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from mlfleet.auth.identity import Principal
from mlfleet.policy.evaluation import (
    ContextValue,
    Decision,
    EvaluationResult,
    Policy,
    PolicyKind,
    RequestContext,
    evaluate_bounded,
)
from mlfleet.protocol.errors import AwsError

Tags = Sequence[Mapping[str, str]]
# Bounds memory under a flood of distinct source addresses; refilled on demand.
DECISION_CACHE_LIMIT = 50_000
AUTHORIZATION_MODES = ("iam", "authenticate-only")
_NOT_ENFORCED = EvaluationResult(Decision.ALLOW, "authorization = authenticate-only")


@dataclass(frozen=True)
class SourcedPolicy:
    """A policy that applies to a principal, and where it came from (SimulatePrincipalPolicy)."""

    source_id: str
    source_type: str  # IAM's PolicySourceType: user, group, role, aws-managed, user-managed
    policy: Policy


class PolicySource(Protocol):
    """Where a principal's policies come from (mlfleet.iam's store)."""

    def policies_of(self, kind: str, name: str) -> Sequence[SourcedPolicy]:
        """Every identity policy that applies to a user (with its groups') or a role."""

    def boundary_of(self, kind: str, name: str) -> Sequence[SourcedPolicy]:
        """The permissions boundary of a user or a role; empty when there is none."""

    def principal_tags(self, kind: str, name: str) -> Tags:
        """The tags of a user or a role (aws:PrincipalTag); empty for anything else."""


@dataclass(frozen=True)
class RequestFacts:
    """What a request says about itself, beyond who sent it and what it asks."""

    source_ip: str | None = None
    secure_transport: bool = False
    resource_tags: Tags = ()
    request_tags: Tags | None = None  # Tags a create asks for (aws:RequestTag, aws:TagKeys)
    extra: Mapping[str, ContextValue] = field(default_factory=dict)


def denial_message(
    principal: Principal, action: str, resource: str, result: EvaluationResult
) -> str:
    """AWS's wording, which names who, what and why."""
    article = "an" if result.kind is PolicyKind.IDENTITY else "a"
    why = (
        f"with an explicit deny in {article} {result.kind.value}"
        if result.decision is Decision.EXPLICIT_DENY
        else f"because no {result.kind.value} allows the {action} action"
    )
    return (
        f"User: {principal.arn} is not authorized to perform: {action} on resource: {resource} "
        f"{why}"
    )


@dataclass(frozen=True)
class _PrincipalPolicies:
    policies: tuple[SourcedPolicy, ...]
    boundary: tuple[SourcedPolicy, ...]  # empty: no permissions boundary
    keys: Mapping[str, ContextValue]
    time_dependent: bool


class Authorizer:
    def __init__(self, store: PolicySource, account_id: str, enforce: bool = True) -> None:
        self._store = store
        self._account = account_id
        self._enforce = enforce
        self._principals: dict[tuple[str, str, str], _PrincipalPolicies] = {}
        self._decisions: dict[tuple[Any, ...], EvaluationResult] = {}

    def invalidate(self) -> None:
        self._principals.clear()
        self._decisions.clear()

    def policies_for(self, principal: Principal) -> tuple[SourcedPolicy, ...]:
        return self._loaded(principal).policies

    def check(
        self, principal: Principal, action: str, resource: str, facts: RequestFacts
    ) -> EvaluationResult:
        if not self._enforce:
            return _NOT_ENFORCED
        loaded = self._loaded(principal)
        cache_key = None
        if not loaded.time_dependent and facts.request_tags is None and not facts.extra:
            cache_key = (
                principal.arn,
                principal.user_id,
                action,
                resource,
                facts.source_ip,
                facts.secure_transport,
                _tag_items(facts.resource_tags),
            )
            cached = self._decisions.get(cache_key)
            if cached is not None:
                return cached
        result = _decide(loaded.policies, loaded.boundary, loaded.keys, action, resource, facts)
        if cache_key is not None:
            if len(self._decisions) >= DECISION_CACHE_LIMIT:
                self._decisions.clear()
            self._decisions[cache_key] = result
        return result

    def fixed_decisions(
        self, principal: Principal, actions: Iterable[str], resource: str, facts: RequestFacts
    ) -> frozenset[str] | None:
        """Which of ``actions`` are allowed, if no decision depends on the moment or on anything
        of a request but ``facts``; None when one might (a date condition, say)."""
        if self._enforce and (
            self._loaded(principal).time_dependent or facts.request_tags is not None or facts.extra
        ):
            return None
        return frozenset(a for a in actions if self.check(principal, a, resource, facts).allowed)

    def simulate(
        self,
        principal: Principal,
        policies: Sequence[SourcedPolicy],
        boundary: Sequence[SourcedPolicy],
        action: str,
        resource: str,
        facts: RequestFacts,
    ) -> EvaluationResult:
        """Evaluate without caches, against the given policies and permissions boundary (empty
        for none), as SimulatePrincipalPolicy does."""
        keys = principal_keys(principal, self._account, self._principal_tags(principal))
        return _decide(policies, boundary, keys, action, resource, facts)

    def require(
        self,
        principal: Principal,
        action: str,
        resource: str,
        facts: RequestFacts,
        code: str = "AccessDeniedException",
    ) -> None:
        result = self.check(principal, action, resource, facts)
        if not result.allowed:
            raise AwsError(code, denial_message(principal, action, resource, result), 403)

    def _loaded(self, principal: Principal) -> _PrincipalPolicies:
        owner = (principal.kind, principal.name, principal.user_id)
        loaded = self._principals.get(owner)
        if loaded is None:
            policies = tuple(self._store.policies_of(principal.kind, principal.name))
            boundary = tuple(self._store.boundary_of(principal.kind, principal.name))
            loaded = _PrincipalPolicies(
                policies,
                boundary,
                principal_keys(principal, self._account, self._principal_tags(principal)),
                any(p.policy.time_dependent for p in (*policies, *boundary)),
            )
            self._principals[owner] = loaded
        return loaded

    def _principal_tags(self, principal: Principal) -> Tags:
        return self._store.principal_tags(principal.kind, principal.name)


def _decide(
    policies: Sequence[SourcedPolicy],
    boundary: Sequence[SourcedPolicy],
    keys: Mapping[str, ContextValue],
    action: str,
    resource: str,
    facts: RequestFacts,
) -> EvaluationResult:
    ctx = RequestContext(action, resource, {**keys, **request_keys(facts)})
    return evaluate_bounded(
        ((p.source_id, p.policy) for p in policies),
        [(p.source_id, p.policy) for p in boundary],
        ctx,
    )


def _tag_items(tags: Tags) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((t["Key"], t.get("Value", "")) for t in tags))


def principal_keys(principal: Principal, account: str, tags: Tags) -> dict[str, ContextValue]:
    keys: dict[str, ContextValue] = {
        "aws:userid": principal.user_id,
        "aws:PrincipalArn": principal.principal_arn,
        "aws:PrincipalAccount": account,
        "aws:PrincipalType": "User" if principal.is_user else "AssumedRole",
    }
    if principal.is_user:
        keys["aws:username"] = principal.name
    for tag in tags:
        keys[f"aws:PrincipalTag/{tag['Key']}"] = tag.get("Value", "")
    return keys


def request_keys(facts: RequestFacts) -> dict[str, ContextValue]:
    now = time.time()
    keys: dict[str, ContextValue] = {
        "aws:CurrentTime": datetime.fromtimestamp(now, UTC),
        "aws:EpochTime": int(now),
        "aws:SecureTransport": facts.secure_transport,
    }
    if facts.source_ip:
        keys["aws:SourceIp"] = facts.source_ip
    for tag in facts.resource_tags:
        value = tag.get("Value", "")
        keys[f"aws:ResourceTag/{tag['Key']}"] = value
        keys[f"sagemaker:ResourceTag/{tag['Key']}"] = value
    if facts.request_tags is not None:
        for tag in facts.request_tags:
            keys[f"aws:RequestTag/{tag['Key']}"] = tag.get("Value", "")
        keys["aws:TagKeys"] = [tag["Key"] for tag in facts.request_tags]
    keys.update(facts.extra)
    return keys
