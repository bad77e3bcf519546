"""IAM: users, groups, roles, managed policies, and what a user or role may do.

Every page reads through the IAM API as the signed-in principal, section by section: a
principal allowed some of the reads (its own user, say) sees those and the API's refusal for
the others. "Effective permissions" is SimulatePrincipalPolicy over every action mlfleet
enforces, so it shows the decisions the authorizer takes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from mlfleet.console.app import PREFIX, Page, PageRoute, Visit
from mlfleet.console.deletion import Deletion
from mlfleet.console.fields import field_errors
from mlfleet.iam.managed import ARN_PREFIX as AWS_POLICY_PREFIX
from mlfleet.mlflow_api.actions import ACTIONS, SERVICE
from mlfleet.policy.evaluation import MALFORMED_POLICY
from mlfleet.protocol.errors import AwsError

_ROOT = f"{PREFIX}/iam"
_MLFLOW_ACTIONS = [f"{SERVICE}:{action}" for action in sorted(ACTIONS)]


@dataclass(frozen=True)
class _Kind:
    """Users, groups and roles share their policy operations and their pages' outline."""

    name: str  # User
    plural: str  # users
    # What the create form may send besides the name.
    create_members: tuple[str, ...] = ("Path",)

    @property
    def member(self) -> str:
        return f"{self.name}Name"

    def url(self, name: str = "") -> str:
        return f"{_ROOT}/{self.plural}" + (f"/{quote(name, safe='')}" if name else "")

    def owner(self, visit: Visit) -> tuple[str, dict[str, str]]:
        """The entity a request is about, and the parameter that names it."""
        name = visit.request.match_info["name"]
        return name, {self.member: name}


_USER = _Kind("User", "users")
_GROUP = _Kind("Group", "groups")
_ROLE = _Kind("Role", "roles", ("Path", "AssumeRolePolicyDocument", "Description"))


@dataclass
class _Listing:
    """One section of a page: what the API returned, or why it refused."""

    items: list[Any] = field(default_factory=list)
    error: AwsError | None = None


def _pages(visit: Visit, operation: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every page of an IAM list (Marker/IsTruncated)."""
    params = dict(params)
    while True:
        page = visit.call("iam", operation, params)
        yield page
        if not page.get("IsTruncated"):
            return
        params["Marker"] = page["Marker"]


def _all(visit: Visit, operation: str, params: dict[str, Any], member: str) -> list[Any]:
    return [item for page in _pages(visit, operation, params) for item in page[member]]


def _listing(visit: Visit, operation: str, params: dict[str, Any], member: str) -> _Listing:
    try:
        return _Listing(_all(visit, operation, params, member))
    except AwsError as exc:
        return _Listing(error=exc)


def _form_errors(
    error: AwsError | None, name_member: str, document_member: str | None = None
) -> dict[str, str]:
    """Validation messages by field, plus IAM's own refusals that are about one field."""
    errors = field_errors(error)
    if error is not None:
        if error.code == MALFORMED_POLICY and document_member:
            errors[document_member] = error.message
        elif error.code == "EntityAlreadyExists":
            errors[name_member] = error.message
    return errors


def _pretty(document: str) -> str:
    # IAM accepted the document as JSON when it was stored.
    return json.dumps(json.loads(document), indent=2)


# --- overview ----------------------------------------------------------------------------------


async def overview(visit: Visit) -> web.StreamResponse:
    sections = {
        "users": _listing(visit, "ListUsers", {}, "Users"),
        "groups": _listing(visit, "ListGroups", {}, "Groups"),
        "roles": _listing(visit, "ListRoles", {}, "Roles"),
        "policies": _listing(visit, "ListPolicies", {"Scope": "Local"}, "Policies"),
    }
    try:
        identity = visit.call("sts", "GetCallerIdentity")
    except AwsError:
        identity = None
    return visit.render("iam/overview.html", sections=sections, identity=identity)


# --- users, groups, roles: lists and creation ---------------------------------------------------


def _list_page(
    visit: Visit, kind: _Kind, error: AwsError | None = None, status: int = 200
) -> web.Response:
    entities = _listing(visit, f"List{kind.name}s", {}, f"{kind.name}s")
    return visit.render(
        "iam/entities.html",
        status=status,
        kind=kind,
        entities=entities,
        error=error,
        errors=_form_errors(error, kind.member, "AssumeRolePolicyDocument"),
        values=visit.form or {},
        default_trust=_default_trust(visit),
    )


def _default_trust(visit: Visit) -> str:
    """Trust the account itself, so that its principals allowed sts:AssumeRole may assume it."""
    account = visit.principal.arn.split(":")[4]
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "sts:AssumeRole",
                }
            ],
        },
        indent=2,
    )


def _entity_list(kind: _Kind) -> Page:
    async def page(visit: Visit) -> web.StreamResponse:
        return _list_page(visit, kind)

    return page


def _create(kind: _Kind) -> Page:
    async def page(visit: Visit) -> web.StreamResponse:
        name = visit.field(kind.member)
        params = {kind.member: name}
        for member in kind.create_members:
            if visit.field(member):
                params[member] = visit.field(member)
        try:
            visit.call("iam", f"Create{kind.name}", params)
        except AwsError as exc:
            return _list_page(visit, kind, exc, 400)
        raise visit.back(kind.url(name), f"Created {kind.name.lower()} {name}.")

    return page


# --- users, groups, roles: detail pages -----------------------------------------------------------


def _entity(visit: Visit, kind: _Kind, name: str) -> dict[str, Any]:
    """Get<Kind>'s entity; a refusal or a missing entity sends the browser to the list."""
    try:
        return dict(visit.call("iam", f"Get{kind.name}", {kind.member: name})[kind.name])
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(kind.url()) from None


def _except(listing: _Listing, key: str, taken: Iterable[str]) -> _Listing:
    """The listing without what is already chosen: the options of an attach or add form."""
    excluded = set(taken)
    listing.items = [item for item in listing.items if item[key] not in excluded]
    return listing


def _render_entity(
    visit: Visit, kind: _Kind, entity: dict[str, Any], **sections: Any
) -> web.Response:
    """A user's, group's or role's page: its own sections, then its policies."""
    name = entity[kind.member]
    owner = {kind.member: name}
    attached = _listing(visit, f"ListAttached{kind.name}Policies", owner, "AttachedPolicies")
    policies = _listing(visit, "ListPolicies", {"Scope": "All"}, "Policies")
    return visit.render(
        f"iam/{kind.name.lower()}.html",
        kind=kind,
        entity=entity,
        base=kind.url(name),
        attached=attached,
        available=_except(policies, "Arn", (p["PolicyArn"] for p in attached.items)),
        inline=_listing(visit, f"List{kind.name}Policies", owner, "PolicyNames"),
        **sections,
    )


def _effective(visit: Visit, arn: str) -> _Listing:
    """Each action mlfleet enforces, as SimulatePrincipalPolicy decides it on any resource."""
    actions = [*visit.console.context["sagemaker_actions"], *_MLFLOW_ACTIONS]
    return _listing(
        visit,
        "SimulatePrincipalPolicy",
        {"PolicySourceArn": arn, "ActionNames": actions},
        "EvaluationResults",
    )


async def user_detail(visit: Visit) -> web.StreamResponse:
    name, owner = _USER.owner(visit)
    user = _entity(visit, _USER, name)
    groups = _listing(visit, "ListGroupsForUser", owner, "Groups")
    all_groups = _listing(visit, "ListGroups", {}, "Groups")
    return _render_entity(
        visit,
        _USER,
        user,
        groups=groups,
        other_groups=_except(all_groups, "GroupName", (g["GroupName"] for g in groups.items)),
        keys=_listing(visit, "ListAccessKeys", owner, "AccessKeyMetadata"),
        permissions=_effective(visit, user["Arn"]),
    )


async def group_detail(visit: Visit) -> web.StreamResponse:
    name, _ = _GROUP.owner(visit)
    try:
        pages = list(_pages(visit, "GetGroup", {"GroupName": name}))
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(_GROUP.url()) from None
    members = [user for page in pages for user in page["Users"]]
    users = _listing(visit, "ListUsers", {}, "Users")
    return _render_entity(
        visit,
        _GROUP,
        pages[0]["Group"],
        members=members,
        other_users=_except(users, "UserName", (u["UserName"] for u in members)),
    )


async def role_detail(visit: Visit) -> web.StreamResponse:
    name, _ = _ROLE.owner(visit)
    role = _entity(visit, _ROLE, name)
    return _render_entity(
        visit,
        _ROLE,
        role,
        trust=_pretty(role["AssumeRolePolicyDocument"]),
        permissions=_effective(visit, role["Arn"]),
    )


def _change(kind: _Kind, operation: str, done: str, *fields: str) -> Page:
    """A button on an entity's page: `operation` on it with the form's `fields`, then back."""

    async def page(visit: Visit) -> web.StreamResponse:
        name, params = kind.owner(visit)
        params.update((member, visit.field(member)) for member in fields)
        try:
            visit.call("iam", operation, params)
        except AwsError as exc:
            visit.refused(exc)
            raise web.HTTPSeeOther(kind.url(name)) from None
        raise visit.back(kind.url(name), done.format(**params))

    return page


# --- access keys ----------------------------------------------------------------------------


async def create_key(visit: Visit) -> web.StreamResponse:
    """The secret is in this one answer only: it is rendered here, never stored for a redirect."""
    name, owner = _USER.owner(visit)
    try:
        key = visit.call("iam", "CreateAccessKey", owner)["AccessKey"]
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(_USER.url(name)) from None
    return visit.render("iam/key_created.html", key=key, user_url=_USER.url(name))


# --- deleting users, groups, roles ----------------------------------------------------------------

_Step = tuple[str, str, dict[str, Any]]  # what it does (for people), operation, parameters


def _dependents(visit: Visit, kind: _Kind, name: str) -> Iterator[_Step]:
    """What IAM wants removed before it deletes the entity, as the calls that remove it."""
    owner = {kind.member: name}
    for policy in _all(visit, f"ListAttached{kind.name}Policies", owner, "AttachedPolicies"):
        yield (
            f"detach policy {policy['PolicyName']}",
            f"Detach{kind.name}Policy",
            {**owner, "PolicyArn": policy["PolicyArn"]},
        )
    for policy_name in _all(visit, f"List{kind.name}Policies", owner, "PolicyNames"):
        yield (
            f"delete inline policy {policy_name}",
            f"Delete{kind.name}Policy",
            {**owner, "PolicyName": policy_name},
        )
    if kind is _USER:
        for key in _all(visit, "ListAccessKeys", owner, "AccessKeyMetadata"):
            key_id = key["AccessKeyId"]
            yield f"delete access key {key_id}", "DeleteAccessKey", {**owner, "AccessKeyId": key_id}
        for group in _all(visit, "ListGroupsForUser", owner, "Groups"):
            group_name = group["GroupName"]
            yield (
                f"remove it from group {group_name}",
                "RemoveUserFromGroup",
                {**owner, "GroupName": group_name},
            )
    if kind is _GROUP:
        for user in _all(visit, "GetGroup", owner, "Users"):
            user_name = user["UserName"]
            yield (
                f"remove member {user_name}",
                "RemoveUserFromGroup",
                {**owner, "UserName": user_name},
            )


def _delete_entity(visit: Visit, kind: _Kind, name: str) -> None:
    # Listed in full first: removing while paging through the same lists would skip items.
    for _, operation, params in list(_dependents(visit, kind, name)):
        visit.call("iam", operation, params)
    visit.call("iam", f"Delete{kind.name}", {kind.member: name})


def _deletion(visit: Visit, kind: _Kind) -> Deletion:
    """The confirmation names what the console removes first (IAM refuses DeleteConflict)."""
    name = visit.request.match_info["name"]
    try:
        steps = [what for what, _, _ in _dependents(visit, kind, name)]
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(kind.url(name)) from None
    noun = kind.name.lower()
    first = f"First the console will, as you: {'; '.join(steps)}." if steps else ""
    return Deletion(
        noun=noun,
        detail=kind.url,
        after=kind.url(),
        consequence=f"IAM deletes a {noun} only once nothing refers to it. {first}",
        run=lambda signed_in, entity: _delete_entity(signed_in, kind, entity),
        done=f"Deleted {noun} {{name}}.",
    )


def _deleting(kind: _Kind, *, confirmed: bool) -> Page:
    """GET asks (naming what goes first), POST deletes once the name was typed."""

    async def page(visit: Visit) -> web.StreamResponse:
        deletion = _deletion(visit, kind)
        return await (deletion.delete(visit) if confirmed else deletion.confirm(visit))

    return page


# --- managed policies -----------------------------------------------------------------------------


async def policy_list(visit: Visit) -> web.StreamResponse:
    policies = _listing(visit, "ListPolicies", {"Scope": "All"}, "Policies")
    return visit.render(
        "iam/policies.html",
        policies=policies,
        customer=[p for p in policies.items if not p["Arn"].startswith(AWS_POLICY_PREFIX)],
        aws=[p for p in policies.items if p["Arn"].startswith(AWS_POLICY_PREFIX)],
    )


def _policy_form(visit: Visit, error: AwsError | None, status: int) -> web.Response:
    return visit.render(
        "iam/policy_new.html",
        status=status,
        error=error,
        errors=_form_errors(error, "PolicyName", "PolicyDocument"),
        values=visit.form or {},
    )


async def policy_form(visit: Visit) -> web.StreamResponse:
    return _policy_form(visit, None, 200)


async def create_policy(visit: Visit) -> web.StreamResponse:
    params = {
        member: visit.field(member)
        for member in ("PolicyName", "PolicyDocument", "Description", "Path")
        if visit.field(member)
    }
    try:
        arn = visit.call("iam", "CreatePolicy", params)["Policy"]["Arn"]
    except AwsError as exc:
        return _policy_form(visit, exc, 400)
    raise visit.back(_policy_url(arn), f"Created policy {params['PolicyName']}.")


def _policy_url(arn: str) -> str:
    # A policy ARN holds slashes (its path), so it travels as a query parameter.
    return f"{_ROOT}/policies/view?{urlencode({'arn': arn})}"


async def policy_detail(visit: Visit) -> web.StreamResponse:
    arn = visit.request.query.get("arn", "")
    try:
        policy = visit.call("iam", "GetPolicy", {"PolicyArn": arn})["Policy"]
        version = visit.call(
            "iam",
            "GetPolicyVersion",
            {"PolicyArn": arn, "VersionId": policy["DefaultVersionId"]},
        )["PolicyVersion"]
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(f"{_ROOT}/policies") from None
    return visit.render(
        "iam/policy.html",
        policy=policy,
        document=_pretty(version["Document"]),
        aws_managed=arn.startswith(AWS_POLICY_PREFIX),
    )


async def delete_policy(visit: Visit) -> web.StreamResponse:
    arn = visit.field("PolicyArn")
    try:
        visit.call("iam", "DeletePolicy", {"PolicyArn": arn})
    except AwsError as exc:
        visit.refused(exc)
        raise web.HTTPSeeOther(_policy_url(arn)) from None
    raise visit.back(f"{_ROOT}/policies", f"Deleted policy {arn.rsplit('/', 1)[-1]}.")


def _entity_routes(kind: _Kind, detail: Page) -> list[PageRoute]:
    base = f"/iam/{kind.plural}"
    return [
        PageRoute("GET", base, _entity_list(kind)),
        PageRoute("POST", base, _create(kind)),
        PageRoute("GET", base + "/{name}", detail),
        PageRoute(
            "POST",
            base + "/{name}/attach",
            _change(kind, f"Attach{kind.name}Policy", "Attached {PolicyArn}.", "PolicyArn"),
        ),
        PageRoute(
            "POST",
            base + "/{name}/detach",
            _change(kind, f"Detach{kind.name}Policy", "Detached {PolicyArn}.", "PolicyArn"),
        ),
        PageRoute("GET", base + "/{name}/delete", _deleting(kind, confirmed=False)),
        PageRoute("POST", base + "/{name}/delete", _deleting(kind, confirmed=True)),
    ]


def _membership_routes(kind: _Kind, segment: str, other: str) -> list[PageRoute]:
    """Adding to and removing from a group, on the user's page or the group's."""
    changes = (
        ("add", "AddUserToGroup", "Added {UserName} to group {GroupName}."),
        ("remove", "RemoveUserFromGroup", "Removed {UserName} from group {GroupName}."),
    )
    return [
        PageRoute(
            "POST",
            f"/iam/{kind.plural}/{{name}}/{segment}/{verb}",
            _change(kind, operation, done, other),
        )
        for verb, operation, done in changes
    ]


ROUTES = [
    PageRoute("GET", "/iam", overview),
    *_entity_routes(_USER, user_detail),
    *_entity_routes(_GROUP, group_detail),
    *_entity_routes(_ROLE, role_detail),
    *_membership_routes(_USER, "groups", "GroupName"),
    *_membership_routes(_GROUP, "members", "UserName"),
    PageRoute("POST", "/iam/users/{name}/keys", create_key),
    PageRoute(
        "POST",
        "/iam/users/{name}/keys/status",
        _change(
            _USER,
            "UpdateAccessKey",
            "Access key {AccessKeyId} is now {Status}.",
            "AccessKeyId",
            "Status",
        ),
    ),
    PageRoute(
        "POST",
        "/iam/users/{name}/keys/delete",
        _change(_USER, "DeleteAccessKey", "Deleted access key {AccessKeyId}.", "AccessKeyId"),
    ),
    PageRoute("GET", "/iam/policies", policy_list),
    PageRoute("GET", "/iam/policies/new", policy_form),
    PageRoute("POST", "/iam/policies", create_policy),
    PageRoute("GET", "/iam/policies/view", policy_detail),
    PageRoute("POST", "/iam/policies/delete", delete_policy),
]
