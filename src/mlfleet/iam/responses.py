"""IAM and STS at ``POST /`` (AWS query protocol), on the steps of :mod:`mlfleet.api.endpoint`.

Parsing and XML come from botocore's models (``mlfleet.protocol.awsquery``); what each operation
does lives in :class:`IamStore`, :class:`SecurityTokenService` and :class:`Simulator`. Each
operation is authorized as the IAM action of its name on the resource it names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mlfleet.api.endpoint import Check, Operation, QueryEndpoint, Recorder
from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.iam.simulator import Simulator
from mlfleet.iam.store import IamStore
from mlfleet.iam.sts import SecurityTokenService
from mlfleet.policy.authorizer import Authorizer, RequestFacts
from mlfleet.policy.evaluation import ContextValue
from mlfleet.protocol.awsjson import load_service_model
from mlfleet.protocol.awsquery import QueryProtocol
from mlfleet.protocol.errors import AwsError

Run = Callable[[dict[str, Any], Principal, RequestFacts], dict[str, Any]]
# The resource an IAM operation acts on: it needs iam:<Operation> there.
Resource = Callable[[dict[str, Any], Principal], str]
# The condition keys an IAM operation's authorization sees beyond the usual ones.
ContextKeys = Callable[[str, dict[str, Any]], Mapping[str, ContextValue]]
_KINDS = ("User", "Group", "Role")
_BOUNDARY_KEY = "iam:PermissionsBoundary"
# The operations IAM gives iam:PermissionsBoundary: those that set a boundary, and those that
# change what a user or role may do, so a policy can say "only within this boundary".
_BOUNDARY_KEYED = frozenset(
    {
        *(f"Create{k}" for k in ("User", "Role")),
        *(f"{verb}{k}PermissionsBoundary" for verb in ("Put", "Delete") for k in ("User", "Role")),
        *(
            f"{verb}{k}Policy"
            for verb in ("Put", "Delete", "Attach", "Detach")
            for k in ("User", "Role")
        ),
    }
)


def _authorized_as_named(
    operations: Mapping[str, tuple[Run, Resource]], context_keys: ContextKeys
) -> dict[str, Operation]:
    """Each IAM operation needs the action of its name on the resource it names."""

    def checks(name: str, resource: Resource) -> Callable[..., list[Check]]:
        action = f"iam:{name}"
        return lambda params, principal: [
            Check(action, resource(params, principal), extra=context_keys(name, params))
        ]

    return {
        name: Operation(run, checks(name, resource)) for name, (run, resource) in operations.items()
    }


# --- IAM ---------------------------------------------------------------------------------------


def _caller_user(params: dict[str, Any], principal: Principal) -> str:
    """UserName, or the calling user's own name when the operation allows leaving it out."""
    name = params.get("UserName")
    if name is not None:
        return str(name)
    if not principal.is_user:
        raise AwsError(
            "ValidationError", "Must specify userName when calling with non-User credentials"
        )
    return principal.name


def iam_api(
    store: IamStore,
    simulator: Simulator,
    credentials: Credentials,
    authorizer: Authorizer,
    recorder: Recorder,
    account_id: str,
) -> QueryEndpoint:
    arns = _IamArns(store, account_id)
    ops: dict[str, tuple[Run, Resource]] = {
        "CreateUser": (lambda p, _c, _f: store.create_user(p), arns.user),
        "GetUser": (lambda p, c, _f: store.get_user(_caller_user(p, c)), arns.user),
        "ListUsers": (lambda p, _c, _f: store.list_users(p), arns.anything),
        "DeleteUser": (lambda p, _c, _f: store.delete_user(p["UserName"]), arns.user),
        "CreateAccessKey": (
            lambda p, c, _f: store.create_access_key(_caller_user(p, c)),
            arns.user,
        ),
        "ListAccessKeys": (
            lambda p, c, _f: store.list_access_keys(_caller_user(p, c), p),
            arns.user,
        ),
        "UpdateAccessKey": (
            lambda p, c, _f: store.update_access_key(
                _caller_user(p, c), p["AccessKeyId"], p["Status"]
            ),
            arns.user,
        ),
        "DeleteAccessKey": (
            lambda p, c, _f: store.delete_access_key(_caller_user(p, c), p["AccessKeyId"]),
            arns.user,
        ),
        "CreateGroup": (lambda p, _c, _f: store.create_group(p), arns.group),
        "GetGroup": (lambda p, _c, _f: store.get_group(p), arns.group),
        "ListGroups": (lambda p, _c, _f: store.list_groups(p), arns.anything),
        "DeleteGroup": (lambda p, _c, _f: store.delete_group(p["GroupName"]), arns.group),
        "AddUserToGroup": (
            lambda p, _c, _f: store.add_user_to_group(p["GroupName"], p["UserName"]),
            arns.group,
        ),
        "RemoveUserFromGroup": (
            lambda p, _c, _f: store.remove_user_from_group(p["GroupName"], p["UserName"]),
            arns.group,
        ),
        "ListGroupsForUser": (lambda p, _c, _f: store.list_groups_for_user(p), arns.user),
        "CreateRole": (lambda p, _c, _f: store.create_role(p), arns.role),
        "GetRole": (lambda p, _c, _f: store.get_role(p["RoleName"]), arns.role),
        "ListRoles": (lambda p, _c, _f: store.list_roles(p), arns.anything),
        "DeleteRole": (lambda p, _c, _f: store.delete_role(p["RoleName"]), arns.role),
        "UpdateAssumeRolePolicy": (
            lambda p, _c, _f: store.update_assume_role_policy(p["RoleName"], p["PolicyDocument"]),
            arns.role,
        ),
        "CreatePolicy": (lambda p, _c, _f: store.create_policy(p), arns.policy),
        "GetPolicy": (lambda p, _c, _f: store.get_policy(p["PolicyArn"]), arns.policy),
        "GetPolicyVersion": (
            lambda p, _c, _f: store.get_policy_version(p["PolicyArn"], p["VersionId"]),
            arns.policy,
        ),
        "ListPolicies": (lambda p, _c, _f: store.list_policies(p), arns.anything),
        "DeletePolicy": (lambda p, _c, _f: store.delete_policy(p["PolicyArn"]), arns.policy),
        "SimulatePrincipalPolicy": (
            lambda p, _c, _f: simulator.simulate_principal_policy(p),
            lambda p, _c: str(p["PolicySourceArn"]),
        ),
    }
    for kind in _KINDS:
        ops.update(_policy_operations(store, kind, arns))
    for kind in ("User", "Role"):
        ops.update(_boundary_operations(store, kind, arns))
    return QueryEndpoint(
        QueryProtocol(load_service_model("iam")),
        service_name="iam",
        credentials=credentials,
        authorizer=authorizer,
        operations=_authorized_as_named(ops, _BoundaryKey(store)),
        recorder=recorder,
        # IAM is global: AWS signs it for us-east-1 whatever the client's region.
        accepted_regions=("us-east-1",),
    )


def _policy_operations(
    store: IamStore, kind: str, arns: _IamArns
) -> dict[str, tuple[Run, Resource]]:
    """Put/Get/Delete/List{Kind}Policy and Attach/Detach/ListAttached{Kind}Policies."""
    owner_member, lower = f"{kind}Name", kind.lower()
    resource = getattr(arns, lower)

    def owner(params: dict[str, Any]) -> str:
        return str(params[owner_member])

    return {
        f"Put{kind}Policy": (
            lambda p, _c, _f: store.put_inline_policy(
                lower, owner(p), p["PolicyName"], p["PolicyDocument"]
            ),
            resource,
        ),
        f"Get{kind}Policy": (
            lambda p, _c, _f: store.get_inline_policy(lower, owner(p), p["PolicyName"]),
            resource,
        ),
        f"Delete{kind}Policy": (
            lambda p, _c, _f: store.delete_inline_policy(lower, owner(p), p["PolicyName"]),
            resource,
        ),
        f"List{kind}Policies": (
            lambda p, _c, _f: store.list_inline_policies(lower, owner(p), p),
            resource,
        ),
        f"Attach{kind}Policy": (
            lambda p, _c, _f: store.attach_policy(lower, owner(p), p["PolicyArn"]),
            resource,
        ),
        f"Detach{kind}Policy": (
            lambda p, _c, _f: store.detach_policy(lower, owner(p), p["PolicyArn"]),
            resource,
        ),
        f"ListAttached{kind}Policies": (
            lambda p, _c, _f: store.list_attached_policies(lower, owner(p), p),
            resource,
        ),
    }


def _boundary_operations(
    store: IamStore, kind: str, arns: _IamArns
) -> dict[str, tuple[Run, Resource]]:
    """Put/Delete{Kind}PermissionsBoundary."""
    owner_member, lower = f"{kind}Name", kind.lower()
    resource = getattr(arns, lower)
    return {
        f"Put{kind}PermissionsBoundary": (
            lambda p, _c, _f: store.put_permissions_boundary(
                lower, p[owner_member], p["PermissionsBoundary"]
            ),
            resource,
        ),
        f"Delete{kind}PermissionsBoundary": (
            lambda p, _c, _f: store.delete_permissions_boundary(lower, p[owner_member]),
            resource,
        ),
    }


class _BoundaryKey:
    """iam:PermissionsBoundary: the boundary a request sets, else the one its user or role has."""

    def __init__(self, store: IamStore) -> None:
        self._store = store

    def __call__(self, operation: str, params: dict[str, Any]) -> Mapping[str, ContextValue]:
        if operation not in _BOUNDARY_KEYED:
            return {}
        arn = params.get("PermissionsBoundary")
        if arn is None and not operation.startswith("Create"):
            kind = "user" if "UserName" in params else "role"
            try:
                record = getattr(self._store, f"{kind}_record")(params[f"{kind.title()}Name"])
            except AwsError:
                return {}  # the operation itself says the entity does not exist
            arn = record.permissions_boundary
        return {} if arn is None else {_BOUNDARY_KEY: arn}


class _IamArns:
    """The ARN an IAM operation acts on: the entity it names, with its path when it exists."""

    def __init__(self, store: IamStore, account_id: str) -> None:
        self._store = store
        self._prefix = f"arn:aws:iam::{account_id}:"

    def _named(self, kind: str, name: str, path: str | None) -> str:
        if path is None:
            try:
                record = getattr(self._store, f"{kind}_record")(name)
                return str(record.arn)
            except AwsError:
                path = "/"
        return f"{self._prefix}{kind}{path}{name}"

    def user(self, params: dict[str, Any], principal: Principal) -> str:
        return self._named("user", _caller_user(params, principal), params.get("Path"))

    def role(self, params: dict[str, Any], _principal: Principal) -> str:
        return self._named("role", params["RoleName"], params.get("Path"))

    def group(self, params: dict[str, Any], _principal: Principal) -> str:
        return self._named("group", params["GroupName"], params.get("Path"))

    def policy(self, params: dict[str, Any], _principal: Principal) -> str:
        if "PolicyArn" in params:
            return str(params["PolicyArn"])
        return f"{self._prefix}policy{params.get('Path', '/')}{params['PolicyName']}"

    @staticmethod
    def anything(_params: dict[str, Any], _principal: Principal) -> str:
        return "*"


# --- STS ---------------------------------------------------------------------------------------


def sts_api(
    sts: SecurityTokenService,
    credentials: Credentials,
    authorizer: Authorizer,
    recorder: Recorder,
    region: str,
    min_duration_seconds: int,
) -> QueryEndpoint:
    ops = {
        # Anyone may ask who they are; AWS does not authorize GetCallerIdentity.
        "GetCallerIdentity": Operation(lambda _p, c, _f: sts.get_caller_identity(c), None),
        # AssumeRole weighs the trust policy with the identity's policies itself.
        "AssumeRole": Operation(lambda p, c, f: sts.assume_role(p, c, f), None),
    }
    return QueryEndpoint(
        QueryProtocol(
            load_service_model("sts"),
            minimum_overrides={"roleDurationSecondsType": min_duration_seconds},
        ),
        service_name="sts",
        credentials=credentials,
        authorizer=authorizer,
        operations=ops,
        recorder=recorder,
        accepted_regions=(region, "us-east-1"),
    )
