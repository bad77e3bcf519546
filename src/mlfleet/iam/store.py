"""IAM identities and their policies: users, groups, roles, access keys, inline and managed ones.

Each public method is one IAM operation's behaviour, taking the operation's (already validated)
input and returning its output members, as ``mlfleet.iam.responses`` serializes them. Refusals
use IAM's error codes and wording. Every change notifies the listeners given at construction, so
caches of keys and authorization decisions never outlive what they were computed from.
"""

from __future__ import annotations

import base64
import secrets
import string
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Required, TypedDict, TypeVar, cast

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth.secrets import SecretBox
from mlfleet.common.paging import IAM, page_by_key
from mlfleet.common.time import when
from mlfleet.iam.managed import ADMINISTRATOR_ACCESS, aws_managed_policies
from mlfleet.policy.authorizer import SourcedPolicy
from mlfleet.policy.evaluation import parse_new_policy, parse_policy
from mlfleet.policy.trust import parse_trust
from mlfleet.protocol.errors import NamedAwsError
from mlfleet.protocol.shapes import iam as shapes
from mlfleet.state.models import (
    AccessKey,
    IamAttachment,
    IamGroup,
    IamGroupMember,
    IamInlinePolicy,
    IamManagedPolicy,
    IamRole,
    IamUser,
)

_ID_ALPHABET = string.ascii_uppercase + "234567"
ACCESS_KEYS_PER_USER = 2
# IAM's quotas on a policy document's size, whitespace not counted.
INLINE_POLICY_LIMITS = {"user": 2048, "group": 5120, "role": 10240}
MANAGED_POLICY_LIMIT = 6144

Output = dict[str, Any]
T = TypeVar("T")
Described = TypeVar("Described", shapes.User, shapes.Role)


def new_id(prefix: str, length: int = 21) -> str:
    """An IAM unique id: AIDA (user), AGPA (group), AROA (role), ANPA (policy) + 17 characters;
    access key ids (AKIA long-term, ASIA temporary) are 20 characters long."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length - len(prefix)))


def new_access_key_id(prefix: str = "AKIA") -> str:
    return new_id(prefix, 20)


def new_secret() -> str:
    return base64.b64encode(secrets.token_bytes(30)).decode()


# --- errors, as IAM names them (MalformedPolicyDocument is the policy language's) -----------------


class NoSuchEntity(NamedAwsError):
    http_status = 404


class EntityAlreadyExists(NamedAwsError):
    http_status = 409


class DeleteConflict(NamedAwsError):
    http_status = 409


class LimitExceeded(NamedAwsError):
    http_status = 409


class InvalidInput(NamedAwsError):
    pass


@dataclass(frozen=True)
class _Usage:
    """How a managed policy is used: attached to entities, and as their permissions boundary."""

    attachments: int = 0
    boundaries: int = 0

    @property
    def in_use(self) -> bool:
        return bool(self.attachments or self.boundaries)


class Truncation(TypedDict, total=False):
    """How an IAM List answer ends: IsTruncated, and the Marker of the next page if there is one."""

    IsTruncated: Required[bool]
    Marker: str


def truncated(
    items: Sequence[T], req: Mapping[str, Any], key: Callable[[T], str]
) -> tuple[list[T], Truncation]:
    """The page of `items` (sorted by `key`) that Marker and MaxItems ask for, and how the List
    answer that holds it ends."""
    page, marker = page_by_key(items, req, IAM, key)
    more: Truncation = {"IsTruncated": marker is not None}
    if marker is not None:
        more["Marker"] = marker
    return page, more


def listing(
    member: str,
    items: Sequence[T],
    req: Mapping[str, Any],
    key: Callable[[T], str],
    show: Callable[[T], Any] | None = None,
) -> Output:
    """IAM's answer to a List call: the page of `items` (sorted by `key`) that Marker and MaxItems
    ask for, each shown by `show`, as `member`; IsTruncated, and the Marker of the next page."""
    page, more = truncated(items, req, key)
    return {member: page if show is None else [show(item) for item in page], **more}


def policy_size(document: str) -> int:
    return sum(1 for char in document if not char.isspace())


def check_path_prefix(items: Iterable[Any], request: Mapping[str, Any]) -> list[Any]:
    prefix = request.get("PathPrefix", "/")
    return [item for item in items if item.path.startswith(prefix)]


class IamStore:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        account_id: str,
        box: SecretBox,
        on_change: Callable[[], object],
    ) -> None:
        self._sessions = sessions
        self._account = account_id
        self._box = box
        self._on_change = on_change

    def _arn(self, kind: str, path: str, name: str) -> str:
        return f"arn:aws:iam::{self._account}:{kind}{path}{name}"

    def _changed(self) -> None:
        self._on_change()

    # --- users -------------------------------------------------------------------------------

    def bootstrap_admin(self, name: str) -> bool:
        """On first start (no users yet), create the administrator: a user with
        AdministratorAccess attached and one access key. Return whether it was created."""
        with self._sessions.begin() as session:
            if session.scalars(select(IamUser.name)).first() is not None:
                return False
            session.add(
                IamUser(
                    name=name,
                    user_id=new_id("AIDA"),
                    path="/",
                    arn=self._arn("user", "/", name),
                    created_at=time.time(),
                    tags=[],
                )
            )
            session.add(
                IamAttachment(owner_kind="user", owner_name=name, policy_arn=ADMINISTRATOR_ACCESS)
            )
        self.create_access_key(name)
        return True

    def create_user(self, req: shapes.CreateUserRequest) -> shapes.CreateUserResponse:
        name, path = req["UserName"], req.get("Path", "/")
        with self._sessions.begin() as session:
            if _exists(session, IamUser, name):
                raise EntityAlreadyExists(f"User with name {name} already exists.")
            user = IamUser(
                name=name,
                user_id=new_id("AIDA"),
                path=path,
                arn=self._arn("user", path, name),
                created_at=time.time(),
                tags=req.get("Tags", []),
                permissions_boundary=_boundary(session, req.get("PermissionsBoundary")),
            )
            session.add(user)
        return {"User": _described(_user(user), user.permissions_boundary)}

    def get_user(self, name: str) -> shapes.GetUserResponse:
        with self._sessions() as session:
            user = self._user(session, name)
        return {"User": _described(_user(user), user.permissions_boundary)}

    def user_record(self, name: str) -> IamUser:
        with self._sessions() as session:
            return self._user(session, name)

    def list_users(self, req: shapes.ListUsersRequest) -> shapes.ListUsersResponse:
        with self._sessions() as session:
            users = session.scalars(select(IamUser).order_by(IamUser.name)).all()
        page, more = truncated(check_path_prefix(users, req), req, lambda u: u.name)
        return {"Users": [_user(u) for u in page], **more}

    def delete_user(self, name: str) -> Output:
        with self._sessions.begin() as session:
            user = self._user(session, name)
            for model, what in (
                (AccessKey, "must delete access keys first"),
                (IamGroupMember, "must remove user from all groups first"),
            ):
                if session.scalars(select(model).where(model.user_name == name)).first():
                    raise DeleteConflict(f"Cannot delete entity, {what}.")
            self._refuse_if_has_policies(session, "user", name)
            session.delete(user)
        self._changed()
        return {}

    def _user(self, session: Session, name: str) -> IamUser:
        user = session.get(IamUser, name)
        if user is None:
            raise NoSuchEntity(f"The user with name {name} cannot be found.")
        return user

    def _refuse_if_has_policies(self, session: Session, kind: str, name: str) -> None:
        inline = select(IamInlinePolicy).where(
            IamInlinePolicy.owner_kind == kind, IamInlinePolicy.owner_name == name
        )
        if session.scalars(inline).first():
            raise DeleteConflict("Cannot delete entity, must delete policies first.")
        attached = select(IamAttachment).where(
            IamAttachment.owner_kind == kind, IamAttachment.owner_name == name
        )
        if session.scalars(attached).first():
            raise DeleteConflict("Cannot delete entity, must detach all policies first.")

    # --- access keys -------------------------------------------------------------------------

    def create_access_key(self, user_name: str) -> shapes.CreateAccessKeyResponse:
        secret = new_secret()
        with self._sessions.begin() as session:
            user = self._user(session, user_name)
            count = session.scalar(
                select(func.count())
                .select_from(AccessKey)
                .where(AccessKey.user_name == user_name, AccessKey.owner_kind == "user")
            )
            if (count or 0) >= ACCESS_KEYS_PER_USER:
                raise LimitExceeded(
                    f"Cannot exceed quota for AccessKeysPerUser: {ACCESS_KEYS_PER_USER}"
                )
            key = AccessKey(
                access_key_id=new_access_key_id(),
                secret_access_key=self._box.seal(secret),
                owner_kind="user",
                user_name=user.name,
                user_arn=user.arn,
                user_id=user.user_id,
                status="Active",
                created_at=time.time(),
            )
            session.add(key)
        return {
            "AccessKey": {
                "UserName": key.user_name,
                "AccessKeyId": key.access_key_id,
                "Status": key.status,
                "CreateDate": when(key.created_at),
                "SecretAccessKey": secret,
            }
        }

    def list_access_keys(
        self, user_name: str, req: shapes.ListAccessKeysRequest
    ) -> shapes.ListAccessKeysResponse:
        with self._sessions() as session:
            self._user(session, user_name)
            keys = session.scalars(
                select(AccessKey)
                .where(AccessKey.user_name == user_name, AccessKey.owner_kind == "user")
                .order_by(AccessKey.access_key_id)
            ).all()
        page, more = truncated(keys, req, lambda k: k.access_key_id)
        return {"AccessKeyMetadata": [_key(k) for k in page], **more}

    def update_access_key(self, user_name: str, key_id: str, status: str) -> Output:
        with self._sessions.begin() as session:
            self._user_key(session, user_name, key_id).status = status
        self._changed()
        return {}

    def delete_access_key(self, user_name: str, key_id: str) -> Output:
        with self._sessions.begin() as session:
            session.delete(self._user_key(session, user_name, key_id))
        self._changed()
        return {}

    def _user_key(self, session: Session, user_name: str, key_id: str) -> AccessKey:
        self._user(session, user_name)
        key = session.get(AccessKey, key_id)
        if key is None or key.owner_kind != "user" or key.user_name != user_name:
            raise NoSuchEntity(f"The Access Key with id {key_id} cannot be found.")
        return key

    # --- groups ------------------------------------------------------------------------------

    def create_group(self, req: shapes.CreateGroupRequest) -> shapes.CreateGroupResponse:
        name, path = req["GroupName"], req.get("Path", "/")
        with self._sessions.begin() as session:
            if _exists(session, IamGroup, name):
                raise EntityAlreadyExists(f"Group with name {name} already exists.")
            group = IamGroup(
                name=name,
                group_id=new_id("AGPA"),
                path=path,
                arn=self._arn("group", path, name),
                created_at=time.time(),
            )
            session.add(group)
        return {"Group": _group(group)}

    def get_group(self, req: shapes.GetGroupRequest) -> shapes.GetGroupResponse:
        name = req["GroupName"]
        with self._sessions() as session:
            group = self._group(session, name)
            users = session.scalars(
                select(IamUser)
                .join(IamGroupMember, IamGroupMember.user_name == IamUser.name)
                .where(IamGroupMember.group_name == name)
                .order_by(IamUser.name)
            ).all()
        page, more = truncated(users, req, lambda u: u.name)
        return {"Group": _group(group), "Users": [_user(u) for u in page], **more}

    def list_groups(self, req: shapes.ListGroupsRequest) -> shapes.ListGroupsResponse:
        with self._sessions() as session:
            groups = session.scalars(select(IamGroup).order_by(IamGroup.name)).all()
        page, more = truncated(check_path_prefix(groups, req), req, lambda g: g.name)
        return {"Groups": [_group(g) for g in page], **more}

    def list_groups_for_user(
        self, req: shapes.ListGroupsForUserRequest
    ) -> shapes.ListGroupsForUserResponse:
        name = req["UserName"]
        with self._sessions() as session:
            self._user(session, name)
            groups = self._groups_of(session, name)
        page, more = truncated(groups, req, lambda g: g.name)
        return {"Groups": [_group(g) for g in page], **more}

    def delete_group(self, name: str) -> Output:
        with self._sessions.begin() as session:
            group = self._group(session, name)
            members = select(IamGroupMember).where(IamGroupMember.group_name == name)
            if session.scalars(members).first():
                raise DeleteConflict("Cannot delete entity, must remove users from group first.")
            self._refuse_if_has_policies(session, "group", name)
            session.delete(group)
        self._changed()
        return {}

    def add_user_to_group(self, group_name: str, user_name: str) -> Output:
        with self._sessions.begin() as session:
            self._group(session, group_name)
            self._user(session, user_name)
            if session.get(IamGroupMember, (group_name, user_name)) is None:
                session.add(IamGroupMember(group_name=group_name, user_name=user_name))
        self._changed()
        return {}

    def remove_user_from_group(self, group_name: str, user_name: str) -> Output:
        with self._sessions.begin() as session:
            self._group(session, group_name)
            self._user(session, user_name)
            membership = session.get(IamGroupMember, (group_name, user_name))
            if membership is None:
                raise NoSuchEntity(f"User {user_name} is not in group {group_name}.")
            session.delete(membership)
        self._changed()
        return {}

    def group_record(self, name: str) -> IamGroup:
        with self._sessions() as session:
            return self._group(session, name)

    def _group(self, session: Session, name: str) -> IamGroup:
        group = session.get(IamGroup, name)
        if group is None:
            raise NoSuchEntity(f"The group with name {name} cannot be found.")
        return group

    def _groups_of(self, session: Session, user_name: str) -> Sequence[IamGroup]:
        return session.scalars(
            select(IamGroup)
            .join(IamGroupMember, IamGroupMember.group_name == IamGroup.name)
            .where(IamGroupMember.user_name == user_name)
            .order_by(IamGroup.name)
        ).all()

    # --- roles -------------------------------------------------------------------------------

    def create_role(self, req: shapes.CreateRoleRequest) -> shapes.CreateRoleResponse:
        name, path = req["RoleName"], req.get("Path", "/")
        trust = req["AssumeRolePolicyDocument"]
        parse_trust(trust)
        with self._sessions.begin() as session:
            if _exists(session, IamRole, name):
                raise EntityAlreadyExists(f"Role with name {name} already exists.")
            role = IamRole(
                name=name,
                role_id=new_id("AROA"),
                path=path,
                arn=self._arn("role", path, name),
                trust_policy=trust,
                description=req.get("Description"),
                max_session_duration=req.get("MaxSessionDuration", 3600),
                created_at=time.time(),
                tags=req.get("Tags", []),
                permissions_boundary=_boundary(session, req.get("PermissionsBoundary")),
            )
            session.add(role)
        return {"Role": _described(_role(role), role.permissions_boundary)}

    def get_role(self, name: str) -> shapes.GetRoleResponse:
        role = self.role_record(name)
        return {"Role": _described(_role(role), role.permissions_boundary)}

    def principal_tags(self, kind: str, name: str) -> Sequence[Mapping[str, str]]:
        if kind == "user":
            return self.user_record(name).tags
        if kind == "role":
            return self.role_record(name).tags
        return ()

    def role_record(self, name: str) -> IamRole:
        with self._sessions() as session:
            return self._role(session, name)

    def list_roles(self, req: shapes.ListRolesRequest) -> shapes.ListRolesResponse:
        with self._sessions() as session:
            roles = session.scalars(select(IamRole).order_by(IamRole.name)).all()
        page, more = truncated(check_path_prefix(roles, req), req, lambda r: r.name)
        return {"Roles": [_role(r) for r in page], **more}

    def update_assume_role_policy(self, name: str, document: str) -> Output:
        parse_trust(document)
        with self._sessions.begin() as session:
            self._role(session, name).trust_policy = document
        self._changed()
        return {}

    def delete_role(self, name: str) -> Output:
        with self._sessions.begin() as session:
            role = self._role(session, name)
            self._refuse_if_has_policies(session, "role", name)
            session.delete(role)
            # Its sessions end with it, as AWS revokes them when the role is gone.
            session.execute(
                delete(AccessKey).where(AccessKey.owner_kind == "role", AccessKey.user_name == name)
            )
        self._changed()
        return {}

    def _role(self, session: Session, name: str) -> IamRole:
        role = session.get(IamRole, name)
        if role is None:
            raise NoSuchEntity(f"The role with name {name} cannot be found.")
        return role

    # --- permissions boundaries --------------------------------------------------------------

    def put_permissions_boundary(self, kind: str, name: str, arn: str) -> Output:
        """Put{User,Role}PermissionsBoundary: set or replace the entity's boundary."""
        with self._sessions.begin() as session:
            entity = self._bounded(session, kind, name)
            entity.permissions_boundary = _boundary(session, arn)
        self._changed()
        return {}

    def delete_permissions_boundary(self, kind: str, name: str) -> Output:
        """Delete{User,Role}PermissionsBoundary: the entity keeps only its identity policies."""
        with self._sessions.begin() as session:
            self._bounded(session, kind, name).permissions_boundary = None
        self._changed()
        return {}

    def _bounded(self, session: Session, kind: str, name: str) -> IamUser | IamRole:
        return self._user(session, name) if kind == "user" else self._role(session, name)

    # --- inline policies ---------------------------------------------------------------------

    def put_inline_policy(self, kind: str, owner: str, policy_name: str, document: str) -> Output:
        parse_new_policy(document)
        limit = INLINE_POLICY_LIMITS[kind]
        if policy_size(document) > limit:
            raise LimitExceeded(f"Maximum policy size of {limit} bytes exceeded for {kind} {owner}")
        with self._sessions.begin() as session:
            self._owner(session, kind, owner)
            row = session.get(IamInlinePolicy, (kind, owner, policy_name))
            if row is None:
                session.add(
                    IamInlinePolicy(
                        owner_kind=kind,
                        owner_name=owner,
                        policy_name=policy_name,
                        document=document,
                    )
                )
            else:
                row.document = document
        self._changed()
        return {}

    def get_inline_policy(self, kind: str, owner: str, policy_name: str) -> Output:
        with self._sessions() as session:
            self._owner(session, kind, owner)
            row = self._inline(session, kind, owner, policy_name)
        return {
            _OWNER_MEMBER[kind]: owner,
            "PolicyName": policy_name,
            "PolicyDocument": row.document,
        }

    def delete_inline_policy(self, kind: str, owner: str, policy_name: str) -> Output:
        with self._sessions.begin() as session:
            self._owner(session, kind, owner)
            session.delete(self._inline(session, kind, owner, policy_name))
        self._changed()
        return {}

    def list_inline_policies(self, kind: str, owner: str, req: Mapping[str, Any]) -> Output:
        with self._sessions() as session:
            self._owner(session, kind, owner)
            names = session.scalars(
                select(IamInlinePolicy.policy_name)
                .where(IamInlinePolicy.owner_kind == kind, IamInlinePolicy.owner_name == owner)
                .order_by(IamInlinePolicy.policy_name)
            ).all()
        return listing("PolicyNames", names, req, str)

    def _inline(self, session: Session, kind: str, owner: str, name: str) -> IamInlinePolicy:
        row = session.get(IamInlinePolicy, (kind, owner, name))
        if row is None:
            raise NoSuchEntity(f"The {kind} policy with name {name} cannot be found.")
        return row

    def _owner(self, session: Session, kind: str, name: str) -> None:
        {"user": self._user, "group": self._group, "role": self._role}[kind](session, name)

    # --- managed policies --------------------------------------------------------------------

    def create_policy(self, req: shapes.CreatePolicyRequest) -> shapes.CreatePolicyResponse:
        name, path, document = req["PolicyName"], req.get("Path", "/"), req["PolicyDocument"]
        parse_new_policy(document)
        if policy_size(document) > MANAGED_POLICY_LIMIT:
            raise LimitExceeded(f"Cannot exceed quota for PolicySize: {MANAGED_POLICY_LIMIT}")
        now = time.time()
        with self._sessions.begin() as session:
            if _exists(session, IamManagedPolicy, name):
                raise EntityAlreadyExists(
                    f"A policy called {name} already exists. Duplicate names are not allowed."
                )
            row = IamManagedPolicy(
                arn=self._arn("policy", path, name),
                name=name,
                policy_id=new_id("ANPA"),
                path=path,
                description=req.get("Description"),
                document=document,
                created_at=now,
                updated_at=now,
                tags=req.get("Tags", []),
            )
            session.add(row)
        return {"Policy": self._policy_output(row, _Usage())}

    def get_policy(self, arn: str) -> shapes.GetPolicyResponse:
        with self._sessions() as session:
            return {"Policy": self._policy_description(session, arn)}

    def get_policy_version(self, arn: str, version_id: str) -> shapes.GetPolicyVersionResponse:
        with self._sessions() as session:
            policy = self._policy_description(session, arn)
        if version_id != policy["DefaultVersionId"]:
            raise NoSuchEntity(f"Policy {arn} version {version_id} does not exist.")
        return {
            "PolicyVersion": {
                "Document": self.managed_document(arn),
                "VersionId": version_id,
                "IsDefaultVersion": True,
                "CreateDate": policy["UpdateDate"],
            }
        }

    def list_policies(self, req: shapes.ListPoliciesRequest) -> shapes.ListPoliciesResponse:
        scope = req.get("Scope", "All")
        with self._sessions() as session:
            usage = self._usage(session)
            policies: list[shapes.Policy] = []
            if scope in ("All", "AWS"):
                policies += [
                    _aws_policy_output(p, usage.get(p.arn, _Usage()))
                    for p in aws_managed_policies().values()
                ]
            if scope in ("All", "Local"):
                rows = session.scalars(select(IamManagedPolicy)).all()
                policies += [self._policy_output(r, usage.get(r.arn, _Usage())) for r in rows]
        if req.get("OnlyAttached"):
            policies = [p for p in policies if p["AttachmentCount"]]
        prefix = req.get("PathPrefix", "/")
        policies = sorted((p for p in policies if p["Path"].startswith(prefix)), key=_by_arn)
        page, more = truncated(policies, req, _by_arn)
        return {"Policies": page, **more}

    def delete_policy(self, arn: str) -> Output:
        with self._sessions.begin() as session:
            row = session.get(IamManagedPolicy, arn)
            if row is None:
                if arn in aws_managed_policies():
                    raise InvalidInput(
                        f"Policy {arn} is an AWS managed policy: it cannot be deleted."
                    )
                raise NoSuchEntity(f"Policy {arn} was not found.")
            if self._usage(session).get(arn, _Usage()).in_use:
                raise DeleteConflict("Cannot delete a policy attached to entities.")
            session.delete(row)
        self._changed()
        return {}

    def attach_policy(self, kind: str, owner: str, arn: str) -> Output:
        with self._sessions.begin() as session:
            self._owner(session, kind, owner)
            if arn not in aws_managed_policies() and session.get(IamManagedPolicy, arn) is None:
                raise NoSuchEntity(f"Policy {arn} does not exist or is not attachable.")
            if session.get(IamAttachment, (kind, owner, arn)) is None:
                session.add(IamAttachment(owner_kind=kind, owner_name=owner, policy_arn=arn))
        self._changed()
        return {}

    def detach_policy(self, kind: str, owner: str, arn: str) -> Output:
        with self._sessions.begin() as session:
            self._owner(session, kind, owner)
            row = session.get(IamAttachment, (kind, owner, arn))
            if row is None:
                raise NoSuchEntity(f"Policy {arn} was not found.")
            session.delete(row)
        self._changed()
        return {}

    def list_attached_policies(self, kind: str, owner: str, req: Mapping[str, Any]) -> Output:
        with self._sessions() as session:
            self._owner(session, kind, owner)
            arns = session.scalars(
                select(IamAttachment.policy_arn)
                .where(IamAttachment.owner_kind == kind, IamAttachment.owner_name == owner)
                .order_by(IamAttachment.policy_arn)
            ).all()
        prefix = req.get("PathPrefix", "/")
        attached = [
            {"PolicyName": arn.rsplit("/", 1)[1], "PolicyArn": arn}
            for arn in arns
            if _policy_path(arn).startswith(prefix)
        ]
        return listing("AttachedPolicies", attached, req, lambda p: p["PolicyArn"])

    def managed_document(self, arn: str) -> str:
        shipped = aws_managed_policies().get(arn)
        if shipped is not None:
            return shipped.document
        with self._sessions() as session:
            row = session.get(IamManagedPolicy, arn)
            if row is None:
                raise NoSuchEntity(f"Policy {arn} was not found.")
            return row.document

    def _policy_description(self, session: Session, arn: str) -> shapes.Policy:
        usage = self._usage(session).get(arn, _Usage())
        shipped = aws_managed_policies().get(arn)
        if shipped is not None:
            return _aws_policy_output(shipped, usage)
        row = session.get(IamManagedPolicy, arn)
        if row is None:
            raise NoSuchEntity(f"Policy {arn} was not found.")
        return self._policy_output(row, usage)

    @staticmethod
    def _usage(session: Session) -> dict[str, _Usage]:
        attached = session.execute(
            select(IamAttachment.policy_arn, func.count()).group_by(IamAttachment.policy_arn)
        ).all()
        usage = {arn: _Usage(attachments=count) for arn, count in attached}
        for model in (IamUser, IamRole):
            bounded = session.execute(
                select(model.permissions_boundary, func.count())
                .where(model.permissions_boundary.is_not(None))
                .group_by(model.permissions_boundary)
            ).all()
            for arn, count in bounded:
                if arn is None:  # the query leaves these out already
                    continue
                known = usage.get(arn, _Usage())
                usage[arn] = _Usage(known.attachments, known.boundaries + count)
        return usage

    @staticmethod
    def _policy_output(row: IamManagedPolicy, usage: _Usage) -> shapes.Policy:
        out: shapes.Policy = {
            "PolicyName": row.name,
            "PolicyId": row.policy_id,
            "Arn": row.arn,
            "Path": row.path,
            "DefaultVersionId": "v1",
            "AttachmentCount": usage.attachments,
            "PermissionsBoundaryUsageCount": usage.boundaries,
            "IsAttachable": True,
            "CreateDate": when(row.created_at),
            "UpdateDate": when(row.updated_at),
            "Tags": _tags(row.tags),
        }
        if row.description:
            out["Description"] = row.description
        return out

    # --- what authorization reads ------------------------------------------------------------

    def policies_of(self, kind: str, name: str) -> list[SourcedPolicy]:
        """Every identity policy that applies to a user (with its groups') or a role."""
        owners = [(kind, name)]
        with self._sessions() as session:
            if kind == "user":
                owners += [("group", g.name) for g in self._groups_of(session, name)]
            found: list[SourcedPolicy] = []
            for owner_kind, owner_name in owners:
                inline = session.scalars(
                    select(IamInlinePolicy)
                    .where(
                        IamInlinePolicy.owner_kind == owner_kind,
                        IamInlinePolicy.owner_name == owner_name,
                    )
                    .order_by(IamInlinePolicy.policy_name)
                ).all()
                found += [
                    SourcedPolicy(row.policy_name, owner_kind, parse_policy(row.document))
                    for row in inline
                ]
                arns = session.scalars(
                    select(IamAttachment.policy_arn).where(
                        IamAttachment.owner_kind == owner_kind,
                        IamAttachment.owner_name == owner_name,
                    )
                ).all()
                found += [p for arn in arns if (p := _managed(session, arn)) is not None]
        return found

    def boundary_of(self, kind: str, name: str) -> list[SourcedPolicy]:
        """The permissions boundary of a user or a role (a role's applies to its sessions), as
        a list that is empty when there is none; groups have none."""
        if kind not in ("user", "role"):
            return []
        with self._sessions() as session:
            arn = self._bounded(session, kind, name).permissions_boundary
            boundary = None if arn is None else _managed(session, arn)
        return [] if boundary is None else [boundary]


_OWNER_MEMBER = {"user": "UserName", "group": "GroupName", "role": "RoleName"}


def _exists(session: Session, model: Any, name: str) -> bool:
    # IAM names are unique regardless of case.
    return (
        session.scalars(select(model).where(func.lower(model.name) == name.lower())).first()
        is not None
    )


def _managed(session: Session, arn: str) -> SourcedPolicy | None:
    shipped = aws_managed_policies().get(arn)
    if shipped is not None:
        return SourcedPolicy(shipped.name, "aws-managed", shipped.policy)
    # A policy in use (attached, or a boundary) cannot be deleted, so the row is there.
    row = session.get(IamManagedPolicy, arn)
    if row is None:
        return None
    return SourcedPolicy(row.name, "user-managed", parse_policy(row.document))


def _boundary(session: Session, arn: str | None) -> str | None:
    """A permissions boundary to set: the ARN of a managed policy that exists, or None."""
    known = arn is None or arn in aws_managed_policies()
    if not known and session.get(IamManagedPolicy, arn) is None:
        raise NoSuchEntity(f"Scope ARN: {arn} does not exist or is not attachable.")
    return arn


def _described(entity: Described, boundary: str | None) -> Described:
    """A user or role (as _user or _role made it) as Get{User,Role} describe it: with the
    permissions boundary, which the List operations leave out (as IAM documents for ListUsers
    and ListRoles)."""
    if boundary is not None:
        entity["PermissionsBoundary"] = {
            # botocore's model says "PermissionsBoundaryPolicy"; IAM answers "Policy".
            "PermissionsBoundaryType": "Policy",
            "PermissionsBoundaryArn": boundary,
        }
    return entity


def _tags(stored: list[dict[str, Any]]) -> list[shapes.Tag]:
    """A tags column: the Tag list the create stored."""
    return cast(list[shapes.Tag], stored)


def _by_arn(policy: shapes.Policy) -> str:
    return str(policy["Arn"])


def _policy_path(arn: str) -> str:
    resource = arn.split(":", 5)[5]  # policy/path/name
    return resource[len("policy") : resource.rfind("/") + 1]


def _user(user: IamUser) -> shapes.User:
    out: shapes.User = {
        "Path": user.path,
        "UserName": user.name,
        "UserId": user.user_id,
        "Arn": user.arn,
        "CreateDate": when(user.created_at),
    }
    if user.tags:
        out["Tags"] = _tags(user.tags)
    return out


def _group(group: IamGroup) -> shapes.Group:
    return {
        "Path": group.path,
        "GroupName": group.name,
        "GroupId": group.group_id,
        "Arn": group.arn,
        "CreateDate": when(group.created_at),
    }


def _role(role: IamRole) -> shapes.Role:
    out: shapes.Role = {
        "Path": role.path,
        "RoleName": role.name,
        "RoleId": role.role_id,
        "Arn": role.arn,
        "CreateDate": when(role.created_at),
        "AssumeRolePolicyDocument": role.trust_policy,
        "MaxSessionDuration": role.max_session_duration,
    }
    if role.description:
        out["Description"] = role.description
    if role.tags:
        out["Tags"] = _tags(role.tags)
    return out


def _key(key: AccessKey) -> shapes.AccessKeyMetadata:
    return {
        "UserName": key.user_name,
        "AccessKeyId": key.access_key_id,
        "Status": key.status,
        "CreateDate": when(key.created_at),
    }


def _aws_policy_output(policy: Any, usage: _Usage) -> shapes.Policy:
    return {
        "PolicyName": policy.name,
        "PolicyId": policy.policy_id,
        "Arn": policy.arn,
        "Path": "/",
        "DefaultVersionId": "v1",
        "AttachmentCount": usage.attachments,
        "PermissionsBoundaryUsageCount": usage.boundaries,
        "IsAttachable": True,
        "Description": policy.description,
        "CreateDate": when(0),
        "UpdateDate": when(0),
    }
