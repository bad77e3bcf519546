"""IAM and STS at ``POST /`` (AWS query protocol), on the steps of :mod:`mlfleet.api.endpoint`.

Parsing and XML come from botocore's models (``mlfleet.protocol.awsquery``); what each operation
does lives in :class:`IamStore`, :class:`SecurityTokenService` and :class:`Simulator`. Each
operation is authorized as the IAM action of its name on the resource it names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlfleet.api.endpoint import QueryEndpoint
from mlfleet.api.operations import (
    ADMINISTRATORS,
    NO_PERMISSION_NEEDED,
    OPERATORS,
    Access,
    Call,
    OperationTable,
    Params,
    Result,
    Target,
    anywhere,
)
from mlfleet.api.pipeline import Pipeline
from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.iam.simulator import Simulator
from mlfleet.iam.store import IamStore
from mlfleet.iam.sts import SecurityTokenService
from mlfleet.policy.evaluation import ContextValue
from mlfleet.protocol.awsjson import load_service_model
from mlfleet.protocol.awsquery import QueryProtocol
from mlfleet.protocol.errors import AwsError, ValidationError
from mlfleet.protocol.shapes import iam as shapes
from mlfleet.protocol.shapes import sts as sts_shapes

_KINDS = ("User", "Group", "Role")
_TYPES = {"user": "AWS::IAM::User", "group": "AWS::IAM::Group", "role": "AWS::IAM::Role"}
POLICY_TYPE = "AWS::IAM::Policy"
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


@dataclass(frozen=True)
class Identities:
    """What IAM's operations run on: the store, and the simulator."""

    store: IamStore
    simulator: Simulator
    account_id: str

    def entity(self, kind: str, name: str, call: Call[Any]) -> Target:
        """The user, group or role a call names, with its path when it exists (or the path the
        call gives it), and the iam:PermissionsBoundary the call sees."""
        path = call.params.get("Path")
        arn = None
        if path is None:
            try:
                arn = str(getattr(self.store, f"{kind}_record")(name).arn)
            except AwsError:
                path = "/"
        if arn is None:
            arn = f"arn:aws:iam::{self.account_id}:{kind}{path}{name}"
        keys = self.boundary_key(call.operation, call.params)
        return Target(arn, keys=keys, type=_TYPES[kind])

    def boundary_key(self, operation: str, params: Params) -> Mapping[str, ContextValue]:
        """iam:PermissionsBoundary: the boundary a request sets, else its user's or role's."""
        if operation not in _BOUNDARY_KEYED:
            return {}
        arn = params.get("PermissionsBoundary")
        if arn is None and not operation.startswith("Create"):
            kind = "user" if "UserName" in params else "role"
            try:
                record = getattr(self.store, f"{kind}_record")(params[f"{kind.title()}Name"])
            except AwsError:
                return {}  # the operation itself says the entity does not exist
            arn = record.permissions_boundary
        return {} if arn is None else {_BOUNDARY_KEY: arn}


OPERATIONS: OperationTable[Identities] = OperationTable("iam")
declare = OPERATIONS.declare
# --- IAM ---------------------------------------------------------------------------------------


def _caller_user(params: Mapping[str, Any], principal: Principal) -> str:
    """UserName, or the calling user's own name when the operation allows leaving it out."""
    name = params.get("UserName")
    if name is not None:
        return str(name)
    if not principal.is_user:
        raise ValidationError("Must specify userName when calling with non-User credentials")
    return principal.name


def _user(iam: Identities, call: Call[Any]) -> Target:
    return iam.entity("user", _caller_user(call.params, call.principal), call)


def _group(iam: Identities, call: Call[Any]) -> Target:
    return iam.entity("group", call.params["GroupName"], call)


def _role(iam: Identities, call: Call[Any]) -> Target:
    return iam.entity("role", call.params["RoleName"], call)


def _policy(iam: Identities, call: Call[Any]) -> Target:
    params = call.params
    if "PolicyArn" in params:
        return Target(str(params["PolicyArn"]), type=POLICY_TYPE)
    path = params.get("Path", "/")
    return Target(
        f"arn:aws:iam::{iam.account_id}:policy{path}{params['PolicyName']}", type=POLICY_TYPE
    )


def _simulated(_iam: Identities, call: Call[Any]) -> Target:
    arn = str(call.params["PolicySourceArn"])
    kind = arn.split(":", 5)[5].split("/", 1)[0] if arn.count(":") >= 5 else ""
    return Target(arn, type=_TYPES.get(kind))


@declare(Access.WRITE, ADMINISTRATORS, resource=_user)
def create_user(iam: Identities, call: Call[shapes.CreateUserRequest]) -> shapes.CreateUserResponse:
    return iam.store.create_user(call.params)


@declare(Access.READ, OPERATORS, resource=_user)
def get_user(iam: Identities, call: Call[shapes.GetUserRequest]) -> shapes.GetUserResponse:
    return iam.store.get_user(_caller_user(call.params, call.principal))


@declare(Access.LIST, ADMINISTRATORS, resource=anywhere)
def list_users(iam: Identities, call: Call[shapes.ListUsersRequest]) -> shapes.ListUsersResponse:
    return iam.store.list_users(call.params)


@declare(Access.WRITE, ADMINISTRATORS, resource=_user)
def delete_user(iam: Identities, call: Call[shapes.DeleteUserRequest]) -> Result:
    return iam.store.delete_user(call.params["UserName"])


@declare(Access.WRITE, ADMINISTRATORS, resource=_user)
def create_access_key(
    iam: Identities, call: Call[shapes.CreateAccessKeyRequest]
) -> shapes.CreateAccessKeyResponse:
    return iam.store.create_access_key(_caller_user(call.params, call.principal))


@declare(Access.LIST, OPERATORS, resource=_user)
def list_access_keys(
    iam: Identities, call: Call[shapes.ListAccessKeysRequest]
) -> shapes.ListAccessKeysResponse:
    return iam.store.list_access_keys(_caller_user(call.params, call.principal), call.params)


@declare(Access.WRITE, ADMINISTRATORS, resource=_user)
def update_access_key(iam: Identities, call: Call[shapes.UpdateAccessKeyRequest]) -> Result:
    user = _caller_user(call.params, call.principal)
    return iam.store.update_access_key(user, call.params["AccessKeyId"], call.params["Status"])


@declare(Access.WRITE, ADMINISTRATORS, resource=_user)
def delete_access_key(iam: Identities, call: Call[shapes.DeleteAccessKeyRequest]) -> Result:
    user = _caller_user(call.params, call.principal)
    return iam.store.delete_access_key(user, call.params["AccessKeyId"])


@declare(Access.WRITE, ADMINISTRATORS, resource=_group)
def create_group(
    iam: Identities, call: Call[shapes.CreateGroupRequest]
) -> shapes.CreateGroupResponse:
    return iam.store.create_group(call.params)


@declare(Access.READ, ADMINISTRATORS, resource=_group)
def get_group(iam: Identities, call: Call[shapes.GetGroupRequest]) -> shapes.GetGroupResponse:
    return iam.store.get_group(call.params)


@declare(Access.LIST, ADMINISTRATORS, resource=anywhere)
def list_groups(iam: Identities, call: Call[shapes.ListGroupsRequest]) -> shapes.ListGroupsResponse:
    return iam.store.list_groups(call.params)


@declare(Access.WRITE, ADMINISTRATORS, resource=_group)
def delete_group(iam: Identities, call: Call[shapes.DeleteGroupRequest]) -> Result:
    return iam.store.delete_group(call.params["GroupName"])


@declare(Access.WRITE, ADMINISTRATORS, resource=_group)
def add_user_to_group(iam: Identities, call: Call[shapes.AddUserToGroupRequest]) -> Result:
    return iam.store.add_user_to_group(call.params["GroupName"], call.params["UserName"])


@declare(Access.WRITE, ADMINISTRATORS, resource=_group)
def remove_user_from_group(
    iam: Identities, call: Call[shapes.RemoveUserFromGroupRequest]
) -> Result:
    return iam.store.remove_user_from_group(call.params["GroupName"], call.params["UserName"])


@declare(Access.LIST, ADMINISTRATORS, resource=_user)
def list_groups_for_user(
    iam: Identities, call: Call[shapes.ListGroupsForUserRequest]
) -> shapes.ListGroupsForUserResponse:
    return iam.store.list_groups_for_user(call.params)


@declare(Access.WRITE, ADMINISTRATORS, resource=_role)
def create_role(iam: Identities, call: Call[shapes.CreateRoleRequest]) -> shapes.CreateRoleResponse:
    return iam.store.create_role(call.params)


@declare(Access.READ, ADMINISTRATORS, resource=_role)
def get_role(iam: Identities, call: Call[shapes.GetRoleRequest]) -> shapes.GetRoleResponse:
    return iam.store.get_role(call.params["RoleName"])


@declare(Access.LIST, ADMINISTRATORS, resource=anywhere)
def list_roles(iam: Identities, call: Call[shapes.ListRolesRequest]) -> shapes.ListRolesResponse:
    return iam.store.list_roles(call.params)


@declare(Access.WRITE, ADMINISTRATORS, resource=_role)
def delete_role(iam: Identities, call: Call[shapes.DeleteRoleRequest]) -> Result:
    return iam.store.delete_role(call.params["RoleName"])


@declare(Access.PERMISSIONS, ADMINISTRATORS, resource=_role)
def update_assume_role_policy(
    iam: Identities, call: Call[shapes.UpdateAssumeRolePolicyRequest]
) -> Result:
    params = call.params
    return iam.store.update_assume_role_policy(params["RoleName"], params["PolicyDocument"])


@declare(Access.PERMISSIONS, ADMINISTRATORS, resource=_policy)
def create_policy(
    iam: Identities, call: Call[shapes.CreatePolicyRequest]
) -> shapes.CreatePolicyResponse:
    return iam.store.create_policy(call.params)


@declare(Access.READ, ADMINISTRATORS, resource=_policy)
def get_policy(iam: Identities, call: Call[shapes.GetPolicyRequest]) -> shapes.GetPolicyResponse:
    return iam.store.get_policy(call.params["PolicyArn"])


@declare(Access.READ, ADMINISTRATORS, resource=_policy)
def get_policy_version(
    iam: Identities, call: Call[shapes.GetPolicyVersionRequest]
) -> shapes.GetPolicyVersionResponse:
    return iam.store.get_policy_version(call.params["PolicyArn"], call.params["VersionId"])


@declare(Access.LIST, ADMINISTRATORS, resource=anywhere)
def list_policies(
    iam: Identities, call: Call[shapes.ListPoliciesRequest]
) -> shapes.ListPoliciesResponse:
    return iam.store.list_policies(call.params)


@declare(Access.PERMISSIONS, ADMINISTRATORS, resource=_policy)
def delete_policy(iam: Identities, call: Call[shapes.DeletePolicyRequest]) -> Result:
    return iam.store.delete_policy(call.params["PolicyArn"])


@declare(Access.READ, ADMINISTRATORS, resource=_simulated)
def simulate_principal_policy(
    iam: Identities, call: Call[shapes.SimulatePrincipalPolicyRequest]
) -> shapes.SimulatePolicyResponse:
    return iam.simulator.simulate_principal_policy(call.params)


def _declare_policy_operations(
    kind: str, locate: Callable[[Identities, Call[Any]], Target]
) -> None:
    """Put/Get/Delete/List{Kind}Policy and Attach/Detach/ListAttached{Kind}Policies."""
    owner_member, lower = f"{kind}Name", kind.lower()

    def owner(call: Call[Any]) -> str:
        return str(call.params[owner_member])

    @declare(Access.PERMISSIONS, ADMINISTRATORS, resource=locate, name=f"Put{kind}Policy")
    def put_policy(iam: Identities, call: Call[Any]) -> Result:
        params = call.params
        return iam.store.put_inline_policy(
            lower, owner(call), params["PolicyName"], params["PolicyDocument"]
        )

    @declare(Access.READ, ADMINISTRATORS, resource=locate, name=f"Get{kind}Policy")
    def get_policy(iam: Identities, call: Call[Any]) -> Result:
        return iam.store.get_inline_policy(lower, owner(call), call.params["PolicyName"])

    @declare(Access.PERMISSIONS, ADMINISTRATORS, resource=locate, name=f"Delete{kind}Policy")
    def delete_policy(iam: Identities, call: Call[Any]) -> Result:
        return iam.store.delete_inline_policy(lower, owner(call), call.params["PolicyName"])

    @declare(Access.LIST, ADMINISTRATORS, resource=locate, name=f"List{kind}Policies")
    def list_policies(iam: Identities, call: Call[Any]) -> Result:
        return iam.store.list_inline_policies(lower, owner(call), call.params)

    @declare(Access.PERMISSIONS, ADMINISTRATORS, resource=locate, name=f"Attach{kind}Policy")
    def attach_policy(iam: Identities, call: Call[Any]) -> Result:
        return iam.store.attach_policy(lower, owner(call), call.params["PolicyArn"])

    @declare(Access.PERMISSIONS, ADMINISTRATORS, resource=locate, name=f"Detach{kind}Policy")
    def detach_policy(iam: Identities, call: Call[Any]) -> Result:
        return iam.store.detach_policy(lower, owner(call), call.params["PolicyArn"])

    @declare(Access.LIST, ADMINISTRATORS, resource=locate, name=f"ListAttached{kind}Policies")
    def list_attached_policies(iam: Identities, call: Call[Any]) -> Result:
        return iam.store.list_attached_policies(lower, owner(call), call.params)


def _declare_boundary_operations(
    kind: str, locate: Callable[[Identities, Call[Any]], Target]
) -> None:
    """Put/Delete{Kind}PermissionsBoundary."""
    owner_member, lower = f"{kind}Name", kind.lower()

    @declare(
        Access.PERMISSIONS, ADMINISTRATORS, resource=locate, name=f"Put{kind}PermissionsBoundary"
    )
    def put_boundary(iam: Identities, call: Call[Any]) -> Result:
        params = call.params
        return iam.store.put_permissions_boundary(
            lower, params[owner_member], params["PermissionsBoundary"]
        )

    @declare(
        Access.PERMISSIONS,
        ADMINISTRATORS,
        resource=locate,
        name=f"Delete{kind}PermissionsBoundary",
    )
    def delete_boundary(iam: Identities, call: Call[Any]) -> Result:
        return iam.store.delete_permissions_boundary(lower, call.params[owner_member])


_declare_policy_operations("User", _user)
_declare_policy_operations("Group", _group)
_declare_policy_operations("Role", _role)
_declare_boundary_operations("User", _user)
_declare_boundary_operations("Role", _role)


def iam_api(
    identities: Identities,
    credentials: Credentials,
    pipeline: Pipeline,
) -> QueryEndpoint:
    return QueryEndpoint(
        QueryProtocol(load_service_model("iam")),
        service_name="iam",
        credentials=credentials,
        pipeline=pipeline,
        operations=OPERATIONS.bind(identities),
        # IAM is global: AWS signs it for us-east-1 whatever the client's region.
        accepted_regions=("us-east-1",),
    )


# --- STS ---------------------------------------------------------------------------------------

STS_OPERATIONS: OperationTable[SecurityTokenService] = OperationTable("sts")


# Anyone may ask who they are; AWS does not authorize GetCallerIdentity.
@STS_OPERATIONS.declare(Access.READ, NO_PERMISSION_NEEDED, resource=None)
def get_caller_identity(
    sts: SecurityTokenService, call: Call[sts_shapes.GetCallerIdentityRequest]
) -> sts_shapes.GetCallerIdentityResponse:
    return sts.get_caller_identity(call.principal)


# AssumeRole weighs the trust policy with the identity's policies itself.
@STS_OPERATIONS.declare(Access.WRITE, ADMINISTRATORS, resource=None)
def assume_role(
    sts: SecurityTokenService, call: Call[sts_shapes.AssumeRoleRequest]
) -> sts_shapes.AssumeRoleResponse:
    return sts.assume_role(call.params, call.principal, call.facts)


def sts_api(
    sts: SecurityTokenService,
    credentials: Credentials,
    pipeline: Pipeline,
    region: str,
    min_duration_seconds: int,
) -> QueryEndpoint:
    return QueryEndpoint(
        QueryProtocol(
            load_service_model("sts"),
            minimum_overrides={"roleDurationSecondsType": min_duration_seconds},
        ),
        service_name="sts",
        credentials=credentials,
        pipeline=pipeline,
        operations=STS_OPERATIONS.bind(sts),
        accepted_regions=(region, "us-east-1"),
    )
