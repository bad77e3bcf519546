"""IAM and STS at ``POST /`` (AWS query protocol): authenticate, parse, authorize, dispatch, answer.

Parsing and XML come from botocore's models (``mlfleet.protocol.awsquery``); what each operation
does lives in :class:`IamStore`, :class:`SecurityTokenService` and :class:`Simulator`. Each
operation is authorized as the IAM action of its name on the resource it names.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import web
from botocore.model import Shape

from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.iam.authorizer import Authorizer, RequestFacts
from mlfleet.iam.simulator import Simulator
from mlfleet.iam.store import IamStore
from mlfleet.iam.sts import SecurityTokenService
from mlfleet.protocol.awsjson import load_service_model
from mlfleet.protocol.awsquery import QueryProtocol, parse_form
from mlfleet.protocol.errors import AwsError

log = logging.getLogger(__name__)

Run = Callable[[dict[str, Any], Principal, RequestFacts], dict[str, Any]]
# The resource an operation acts on, for authorization; None means no authorization at all.
Resource = Callable[[dict[str, Any], Principal], str] | None

# Query services answer authentication failures with their own codes for the same faults.
_QUERY_AUTH_CODES = {
    "UnrecognizedClientException": "InvalidClientTokenId",
    "InvalidSignatureException": "SignatureDoesNotMatch",
    "ExpiredTokenException": "ExpiredToken",
}
_POLICY_DOCUMENT_SHAPE = "policyDocumentType"
_KINDS = ("User", "Group", "Role")


@dataclass(frozen=True)
class Operation:
    run: Run
    resource: Resource


class QueryApi:
    """One query-protocol service (IAM or STS)."""

    def __init__(
        self,
        service_name: str,
        credentials: Credentials,
        authorizer: Authorizer,
        operations: Mapping[str, Operation],
        accepted_regions: tuple[str, ...],
        minimum_overrides: Mapping[str, int] | None = None,
    ) -> None:
        self.service_name = service_name
        self._protocol = QueryProtocol(load_service_model(service_name), minimum_overrides)
        self._credentials = credentials
        self._authorizer = authorizer
        self._operations = operations
        self._regions = accepted_regions

    async def handle(self, request: web.Request, body: bytes, signed_region: str) -> web.Response:
        request_id = str(uuid.uuid4())
        try:
            principal = self._credentials.verify_sigv4(
                method=request.method,
                raw_path_qs=request.raw_path,
                headers=request.headers,
                body=body,
                service=self.service_name,
                region=signed_region if signed_region in self._regions else self._regions[0],
            )
            form = parse_form(body)
            model = self._protocol.operation_for(form)
            operation = self._operations.get(model.name)
            if operation is None:
                raise AwsError(
                    "InvalidAction",
                    f"{self.service_name}:{model.name} is not implemented by mlfleet.",
                )
            params = self._protocol.parse_input(model, form)
            facts = RequestFacts(source_ip=request.remote, secure_transport=request.secure)
            if operation.resource is not None:
                self._authorizer.require(
                    principal,
                    f"{self.service_name}:{model.name}",
                    operation.resource(params, principal),
                    facts,
                    code="AccessDenied",
                )
            result = operation.run(params, principal, facts)
            if model.output_shape is not None:
                result = _quote_policy_documents(model.output_shape, result)
            payload = self._protocol.serialize_output(model, result, request_id)
            return web.Response(body=payload, content_type="text/xml")
        except AwsError as exc:
            error = AwsError(_QUERY_AUTH_CODES.get(exc.code, exc.code), exc.message, exc.status)
            return web.Response(
                status=self._protocol.error_status(error),
                body=self._protocol.error_body(error, request_id),
                content_type="text/xml",
            )
        except Exception:
            log.exception("%s request %s failed", self.service_name, request_id)
            failure = AwsError("ServiceFailure", f"Internal error (request {request_id}).", 500)
            return web.Response(
                status=500,
                body=self._protocol.error_body(failure, request_id),
                content_type="text/xml",
            )


def _quote_policy_documents(shape: Shape, data: Any) -> Any:
    """IAM returns policy documents URL-encoded (botocore decodes them back into dicts)."""
    if shape.type_name == "structure" and isinstance(data, Mapping):
        return {
            name: (
                quote(value, safe="")
                if member.name == _POLICY_DOCUMENT_SHAPE and isinstance(value, str)
                else _quote_policy_documents(member, value)
            )
            for name, member in shape.members.items()
            if (value := data.get(name)) is not None
        }
    if shape.type_name == "list" and isinstance(data, list):
        return [_quote_policy_documents(shape.member, item) for item in data]
    return data


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
    account_id: str,
) -> QueryApi:
    arns = _IamArns(store, account_id)
    ops: dict[str, Operation] = {
        "CreateUser": Operation(lambda p, _c, _f: store.create_user(p), arns.user),
        "GetUser": Operation(lambda p, c, _f: store.get_user(_caller_user(p, c)), arns.user),
        "ListUsers": Operation(lambda p, _c, _f: store.list_users(p), arns.anything),
        "DeleteUser": Operation(lambda p, _c, _f: store.delete_user(p["UserName"]), arns.user),
        "CreateAccessKey": Operation(
            lambda p, c, _f: store.create_access_key(_caller_user(p, c)), arns.user
        ),
        "ListAccessKeys": Operation(
            lambda p, c, _f: store.list_access_keys(_caller_user(p, c), p), arns.user
        ),
        "UpdateAccessKey": Operation(
            lambda p, c, _f: store.update_access_key(
                _caller_user(p, c), p["AccessKeyId"], p["Status"]
            ),
            arns.user,
        ),
        "DeleteAccessKey": Operation(
            lambda p, c, _f: store.delete_access_key(_caller_user(p, c), p["AccessKeyId"]),
            arns.user,
        ),
        "CreateGroup": Operation(lambda p, _c, _f: store.create_group(p), arns.group),
        "GetGroup": Operation(lambda p, _c, _f: store.get_group(p), arns.group),
        "ListGroups": Operation(lambda p, _c, _f: store.list_groups(p), arns.anything),
        "DeleteGroup": Operation(lambda p, _c, _f: store.delete_group(p["GroupName"]), arns.group),
        "AddUserToGroup": Operation(
            lambda p, _c, _f: store.add_user_to_group(p["GroupName"], p["UserName"]), arns.group
        ),
        "RemoveUserFromGroup": Operation(
            lambda p, _c, _f: store.remove_user_from_group(p["GroupName"], p["UserName"]),
            arns.group,
        ),
        "ListGroupsForUser": Operation(lambda p, _c, _f: store.list_groups_for_user(p), arns.user),
        "CreateRole": Operation(lambda p, _c, _f: store.create_role(p), arns.role),
        "GetRole": Operation(lambda p, _c, _f: store.get_role(p["RoleName"]), arns.role),
        "ListRoles": Operation(lambda p, _c, _f: store.list_roles(p), arns.anything),
        "DeleteRole": Operation(lambda p, _c, _f: store.delete_role(p["RoleName"]), arns.role),
        "UpdateAssumeRolePolicy": Operation(
            lambda p, _c, _f: store.update_assume_role_policy(p["RoleName"], p["PolicyDocument"]),
            arns.role,
        ),
        "CreatePolicy": Operation(lambda p, _c, _f: store.create_policy(p), arns.policy),
        "GetPolicy": Operation(lambda p, _c, _f: store.get_policy(p["PolicyArn"]), arns.policy),
        "GetPolicyVersion": Operation(
            lambda p, _c, _f: store.get_policy_version(p["PolicyArn"], p["VersionId"]),
            arns.policy,
        ),
        "ListPolicies": Operation(lambda p, _c, _f: store.list_policies(p), arns.anything),
        "DeletePolicy": Operation(
            lambda p, _c, _f: store.delete_policy(p["PolicyArn"]), arns.policy
        ),
        "SimulatePrincipalPolicy": Operation(
            lambda p, _c, _f: simulator.simulate_principal_policy(p),
            lambda p, _c: str(p["PolicySourceArn"]),
        ),
    }
    for kind in _KINDS:
        ops.update(_policy_operations(store, kind, arns))
    return QueryApi("iam", credentials, authorizer, ops, ("us-east-1",))


def _policy_operations(store: IamStore, kind: str, arns: _IamArns) -> dict[str, Operation]:
    """Put/Get/Delete/List{Kind}Policy and Attach/Detach/ListAttached{Kind}Policies."""
    owner_member, lower = f"{kind}Name", kind.lower()
    resource = getattr(arns, lower)

    def owner(params: dict[str, Any]) -> str:
        return str(params[owner_member])

    return {
        f"Put{kind}Policy": Operation(
            lambda p, _c, _f: store.put_inline_policy(
                lower, owner(p), p["PolicyName"], p["PolicyDocument"]
            ),
            resource,
        ),
        f"Get{kind}Policy": Operation(
            lambda p, _c, _f: store.get_inline_policy(lower, owner(p), p["PolicyName"]), resource
        ),
        f"Delete{kind}Policy": Operation(
            lambda p, _c, _f: store.delete_inline_policy(lower, owner(p), p["PolicyName"]),
            resource,
        ),
        f"List{kind}Policies": Operation(
            lambda p, _c, _f: store.list_inline_policies(lower, owner(p), p), resource
        ),
        f"Attach{kind}Policy": Operation(
            lambda p, _c, _f: store.attach_policy(lower, owner(p), p["PolicyArn"]), resource
        ),
        f"Detach{kind}Policy": Operation(
            lambda p, _c, _f: store.detach_policy(lower, owner(p), p["PolicyArn"]), resource
        ),
        f"ListAttached{kind}Policies": Operation(
            lambda p, _c, _f: store.list_attached_policies(lower, owner(p), p), resource
        ),
    }


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
    region: str,
    min_duration_seconds: int,
) -> QueryApi:
    ops = {
        # Anyone may ask who they are; AWS does not authorize GetCallerIdentity.
        "GetCallerIdentity": Operation(lambda _p, c, _f: sts.get_caller_identity(c), None),
        # AssumeRole weighs the trust policy with the identity's policies itself.
        "AssumeRole": Operation(lambda p, c, f: sts.assume_role(p, c, f), None),
    }
    return QueryApi(
        "sts",
        credentials,
        authorizer,
        ops,
        (region, "us-east-1"),
        minimum_overrides={"roleDurationSecondsType": min_duration_seconds},
    )
