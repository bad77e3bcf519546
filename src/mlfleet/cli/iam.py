"""``mlfleet iam ...``: users, groups, access keys and policies, over the daemon's IAM and STS APIs.

Every command is an ordinary boto3 call against the daemon (nothing here reaches its state
directly), signed with the data dir's credentials like the other client-side commands.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from botocore.client import BaseClient
from rich.markup import escape
from rich.table import Table

from mlfleet.cli.common import DataDir, EndpointUrl, call, console, err, service_client

iam_app = typer.Typer(no_args_is_help=True)

# IAM is a global service: AWS signs it for us-east-1 whatever the configured region.
IAM_REGION = "us-east-1"

PolicyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--policy",
        help="Managed policy to attach: short name or ARN (repeatable).",
        show_default=False,
    ),
]


class Scope(StrEnum):
    all = "all"
    aws = "aws"
    local = "local"


_SCOPES = {Scope.all: "All", Scope.aws: "AWS", Scope.local: "Local"}


def _iam(data_dir: Path | None, endpoint_url: str | None) -> BaseClient:
    return service_client(data_dir, endpoint_url, "iam", region=IAM_REGION)


def _pages(client: BaseClient, operation: str, member: str, **params: Any) -> Iterator[Any]:
    """Every item of an IAM list operation, following Marker/IsTruncated."""
    while True:
        page = call(client, operation, **params)
        yield from page.get(member, [])
        if not page.get("IsTruncated") or "Marker" not in page:
            return
        params["Marker"] = page["Marker"]


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _table(*columns: str, keep: tuple[str, ...] = ("name", "created")) -> Table:
    """A table whose long cells (ARNs, lists) fold rather than end in an ellipsis: a narrow
    terminal or a pipe still shows every ARN whole. Columns in `keep` are never wrapped."""
    table = Table()
    for column in columns:
        table.add_column(column, no_wrap=column in keep, overflow="fold")
    return table


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _plain(text: str) -> None:
    """Print text exactly as is (no markup, highlighting or wrapping): secrets, lines to copy."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _signing_key_id(client: BaseClient) -> str | None:
    """The access key id this client signs with (None when botocore hides it)."""
    try:
        return str(client._request_signer._credentials.get_frozen_credentials().access_key)
    except AttributeError:
        return None


def _refuse_own_key(client: BaseClient, key_id: str, verb: str) -> None:
    """Never lock the caller out: the key the command signs with stays usable."""
    if key_id == _signing_key_id(client):
        raise _fail(
            f"{key_id} is the access key this command signs with: {verb} it with another "
            "identity's credentials (or switch the data dir's credentials to a new key first)"
        )


def _resolve_policy(client: BaseClient, name_or_arn: str) -> str:
    """A policy ARN from a full ARN or the short name of a shipped or customer policy."""
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    matches = [
        p["Arn"]
        for p in _pages(client, "list_policies", "Policies", Scope="All")
        if p["PolicyName"] == name_or_arn
    ]
    if not matches:
        raise _fail(f"no policy named {name_or_arn} (see `mlfleet iam policies`)")
    if len(matches) > 1:
        raise _fail(f"{name_or_arn} is ambiguous, give its ARN: {', '.join(matches)}")
    return str(matches[0])


# --- identity ----------------------------------------------------------------------------------


@iam_app.command()
def whoami(data_dir: DataDir = None, endpoint_url: EndpointUrl = None) -> None:
    """Show the identity the configured credentials belong to."""
    identity = call(service_client(data_dir, endpoint_url, "sts"), "get_caller_identity")
    table = Table(show_header=False, box=None)
    for key in ("Arn", "UserId", "Account"):
        table.add_row(key, identity.get(key, ""))
    console.print(table)


# --- users -------------------------------------------------------------------------------------


@iam_app.command()
def users(data_dir: DataDir = None, endpoint_url: EndpointUrl = None) -> None:
    """List users with their groups and attached policies."""
    client = _iam(data_dir, endpoint_url)
    table = _table("name", "ARN", "created", "groups", "attached policies")
    for user in _pages(client, "list_users", "Users"):
        name = user["UserName"]
        groups = [
            g["GroupName"] for g in _pages(client, "list_groups_for_user", "Groups", UserName=name)
        ]
        policies = [
            p["PolicyName"]
            for p in _pages(
                client, "list_attached_user_policies", "AttachedPolicies", UserName=name
            )
        ]
        table.add_row(
            name, user["Arn"], _when(user.get("CreateDate")), ", ".join(groups), ", ".join(policies)
        )
    console.print(table)


@iam_app.command("create-user")
def create_user(
    name: str,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", help="Group to add the user to (repeatable).", show_default=False),
    ] = None,
    policy: PolicyOption = None,
    with_key: Annotated[
        bool, typer.Option("--with-key", help="Also create an access key and print it once.")
    ] = False,
    path: Annotated[str, typer.Option(help="IAM path of the user.")] = "/",
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Create a user, optionally in groups, with policies and an access key."""
    client = _iam(data_dir, endpoint_url)
    # Check every group and policy first, so that a typo creates nothing.
    for g in group or []:
        call(client, "get_group", GroupName=g, MaxItems=1)
    arns = [_resolve_policy(client, p) for p in policy or []]
    user = call(client, "create_user", UserName=name, Path=path)["User"]
    console.print(user["Arn"], highlight=False)
    for g in group or []:
        call(client, "add_user_to_group", GroupName=g, UserName=name)
        console.print(f"  in group {escape(g)}", highlight=False)
    for arn in arns:
        call(client, "attach_user_policy", UserName=name, PolicyArn=arn)
        console.print(f"  attached {escape(arn)}", highlight=False)
    if with_key:
        _print_new_key(call(client, "create_access_key", UserName=name)["AccessKey"])


def _print_new_key(key: dict[str, Any]) -> None:
    key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]
    _plain(f"access key id:     {key_id}")
    _plain(f"secret access key: {secret}")
    console.print(
        "[yellow]The secret is shown only now: store it somewhere safe.[/yellow]", highlight=False
    )
    _plain("")
    _plain(
        f"export MLFLOW_TRACKING_USERNAME={shlex.quote(key_id)} "
        f"MLFLOW_TRACKING_PASSWORD={shlex.quote(secret)}"
    )
    _plain(
        f"export AWS_ACCESS_KEY_ID={shlex.quote(key_id)} "
        f"AWS_SECRET_ACCESS_KEY={shlex.quote(secret)}"
    )


@iam_app.command("delete-user")
def delete_user(
    name: str,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="First delete its access keys and inline policies, detach its policies "
            "and remove it from its groups.",
        ),
    ] = False,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Delete a user."""
    client = _iam(data_dir, endpoint_url)
    arn = call(client, "get_user", UserName=name)["User"]["Arn"]
    me = call(service_client(data_dir, endpoint_url, "sts"), "get_caller_identity")["Arn"]
    if arn == me:
        raise _fail(f"{name} is the identity this command runs as: it would lock you out")
    if force:
        for key in list(_pages(client, "list_access_keys", "AccessKeyMetadata", UserName=name)):
            call(client, "delete_access_key", UserName=name, AccessKeyId=key["AccessKeyId"])
            console.print(f"  deleted access key {key['AccessKeyId']}", highlight=False)
        for policy_name in list(_pages(client, "list_user_policies", "PolicyNames", UserName=name)):
            call(client, "delete_user_policy", UserName=name, PolicyName=policy_name)
            console.print(f"  deleted inline policy {escape(policy_name)}", highlight=False)
        for attached in list(
            _pages(client, "list_attached_user_policies", "AttachedPolicies", UserName=name)
        ):
            call(client, "detach_user_policy", UserName=name, PolicyArn=attached["PolicyArn"])
            console.print(f"  detached {escape(attached['PolicyArn'])}", highlight=False)
        for g in list(_pages(client, "list_groups_for_user", "Groups", UserName=name)):
            call(client, "remove_user_from_group", GroupName=g["GroupName"], UserName=name)
            console.print(f"  removed from group {escape(g['GroupName'])}", highlight=False)
    call(
        client,
        "delete_user",
        hints=None
        if force
        else {"DeleteConflict": f"`mlfleet iam delete-user {name} --force` removes them first."},
        UserName=name,
    )
    console.print(f"{escape(name)}: deleted", highlight=False)


# --- access keys -------------------------------------------------------------------------------


@iam_app.command("create-key")
def create_key(user: str, data_dir: DataDir = None, endpoint_url: EndpointUrl = None) -> None:
    """Create an access key for a user and print its secret once."""
    key = call(_iam(data_dir, endpoint_url), "create_access_key", UserName=user)["AccessKey"]
    _print_new_key(key)


@iam_app.command()
def keys(user: str, data_dir: DataDir = None, endpoint_url: EndpointUrl = None) -> None:
    """List a user's access keys (never their secrets)."""
    client = _iam(data_dir, endpoint_url)
    table = _table("access key id", "status", "created", keep=("access key id", "created"))
    for key in _pages(client, "list_access_keys", "AccessKeyMetadata", UserName=user):
        status = key["Status"]
        colour = "green" if status == "Active" else "red"
        table.add_row(
            key["AccessKeyId"], f"[{colour}]{status}[/{colour}]", _when(key.get("CreateDate"))
        )
    console.print(table)


def _set_key_status(
    user: str, key_id: str, status: str, data_dir: Path | None, endpoint_url: str | None
) -> None:
    client = _iam(data_dir, endpoint_url)
    if status == "Inactive":
        _refuse_own_key(client, key_id, "disable")
    call(
        client,
        "update_access_key",
        UserName=user,
        AccessKeyId=key_id,
        Status=status,
    )
    console.print(f"{key_id}: {status}", highlight=False)


@iam_app.command("disable-key")
def disable_key(
    user: str, key_id: str, data_dir: DataDir = None, endpoint_url: EndpointUrl = None
) -> None:
    """Deactivate an access key (requests signed with it are refused until enabled again)."""
    _set_key_status(user, key_id, "Inactive", data_dir, endpoint_url)


@iam_app.command("enable-key")
def enable_key(
    user: str, key_id: str, data_dir: DataDir = None, endpoint_url: EndpointUrl = None
) -> None:
    """Activate an access key again."""
    _set_key_status(user, key_id, "Active", data_dir, endpoint_url)


@iam_app.command("delete-key")
def delete_key(
    user: str, key_id: str, data_dir: DataDir = None, endpoint_url: EndpointUrl = None
) -> None:
    """Delete an access key."""
    client = _iam(data_dir, endpoint_url)
    _refuse_own_key(client, key_id, "delete")
    call(client, "delete_access_key", UserName=user, AccessKeyId=key_id)
    console.print(f"{key_id}: deleted", highlight=False)


# --- groups ------------------------------------------------------------------------------------


@iam_app.command()
def groups(data_dir: DataDir = None, endpoint_url: EndpointUrl = None) -> None:
    """List groups with their members and attached policies."""
    client = _iam(data_dir, endpoint_url)
    table = _table("name", "ARN", "created", "members", "attached policies")
    for group in _pages(client, "list_groups", "Groups"):
        name = group["GroupName"]
        members = [u["UserName"] for u in _pages(client, "get_group", "Users", GroupName=name)]
        policies = [
            p["PolicyName"]
            for p in _pages(
                client, "list_attached_group_policies", "AttachedPolicies", GroupName=name
            )
        ]
        table.add_row(
            name,
            group["Arn"],
            _when(group.get("CreateDate")),
            ", ".join(members),
            ", ".join(policies),
        )
    console.print(table)


@iam_app.command("create-group")
def create_group(
    name: str,
    policy: PolicyOption = None,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Create a group, optionally with policies attached."""
    client = _iam(data_dir, endpoint_url)
    arns = [_resolve_policy(client, p) for p in policy or []]
    console.print(call(client, "create_group", GroupName=name)["Group"]["Arn"], highlight=False)
    for arn in arns:
        call(client, "attach_group_policy", GroupName=name, PolicyArn=arn)
        console.print(f"  attached {escape(arn)}", highlight=False)


@iam_app.command("add-to-group")
def add_to_group(
    group: str, user: str, data_dir: DataDir = None, endpoint_url: EndpointUrl = None
) -> None:
    """Add a user to a group."""
    call(_iam(data_dir, endpoint_url), "add_user_to_group", GroupName=group, UserName=user)
    console.print(f"{escape(user)}: added to {escape(group)}", highlight=False)


@iam_app.command("remove-from-group")
def remove_from_group(
    group: str, user: str, data_dir: DataDir = None, endpoint_url: EndpointUrl = None
) -> None:
    """Remove a user from a group."""
    call(_iam(data_dir, endpoint_url), "remove_user_from_group", GroupName=group, UserName=user)
    console.print(f"{escape(user)}: removed from {escape(group)}", highlight=False)


# --- policies ----------------------------------------------------------------------------------


@iam_app.command()
def policies(
    scope: Annotated[
        Scope, typer.Option(help="aws: the shipped policies; local: your own.")
    ] = Scope.all,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """List managed policies."""
    client = _iam(data_dir, endpoint_url)
    table = _table("name", "ARN", "scope", "attachments")
    for p in _pages(client, "list_policies", "Policies", Scope=_SCOPES[scope]):
        shipped = p["Arn"].startswith("arn:aws:iam::aws:policy/")
        table.add_row(
            p["PolicyName"], p["Arn"], "aws" if shipped else "local", str(p["AttachmentCount"])
        )
    console.print(table)


TargetUser = Annotated[str | None, typer.Option("--user", help="The user.", show_default=False)]
TargetGroup = Annotated[str | None, typer.Option("--group", help="The group.", show_default=False)]
TargetRole = Annotated[str | None, typer.Option("--role", help="The role.", show_default=False)]


def _target(user: str | None, group: str | None, role: str | None) -> tuple[str, str]:
    """("User"|"Group"|"Role", name) of exactly one of --user, --group, --role."""
    chosen = [
        (kind, name)
        for kind, name in (("User", user), ("Group", group), ("Role", role))
        if name is not None
    ]
    if len(chosen) != 1:
        raise _fail("give exactly one of --user, --group or --role", code=2)
    return chosen[0]


def _attach_or_detach(
    verb: str,
    policy: str,
    targets: tuple[str | None, str | None, str | None],
    data_dir: Path | None,
    endpoint_url: str | None,
) -> None:
    kind, name = _target(*targets)
    client = _iam(data_dir, endpoint_url)
    arn = _resolve_policy(client, policy)
    params: dict[str, Any] = {f"{kind}Name": name, "PolicyArn": arn}
    call(client, f"{verb}_{kind.lower()}_policy", **params)
    done = "attached to" if verb == "attach" else "detached from"
    console.print(f"{escape(arn)} {done} {kind.lower()} {escape(name)}", highlight=False)


@iam_app.command()
def attach(
    policy: Annotated[str, typer.Argument(help="Short name of a managed policy, or its ARN.")],
    user: TargetUser = None,
    group: TargetGroup = None,
    role: TargetRole = None,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Attach a managed policy to a user, group or role."""
    _attach_or_detach("attach", policy, (user, group, role), data_dir, endpoint_url)


@iam_app.command()
def detach(
    policy: Annotated[str, typer.Argument(help="Short name of a managed policy, or its ARN.")],
    user: TargetUser = None,
    group: TargetGroup = None,
    role: TargetRole = None,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Detach a managed policy from a user, group or role."""
    _attach_or_detach("detach", policy, (user, group, role), data_dir, endpoint_url)


@iam_app.command("create-policy")
def create_policy(
    name: str,
    file: Annotated[
        Path,
        typer.Argument(
            help="The policy document (JSON).", exists=True, dir_okay=False, readable=True
        ),
    ],
    description: Annotated[str | None, typer.Option(help="What the policy is for.")] = None,
    path: Annotated[str, typer.Option(help="IAM path of the policy.")] = "/",
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Create a customer managed policy from a JSON document."""
    params: dict[str, Any] = {
        "PolicyName": name,
        "Path": path,
        "PolicyDocument": file.read_text(encoding="utf-8"),
    }
    if description:
        params["Description"] = description
    created = call(_iam(data_dir, endpoint_url), "create_policy", **params)["Policy"]
    console.print(created["Arn"], highlight=False)


# --- simulation --------------------------------------------------------------------------------


@iam_app.command()
def simulate(
    principal: Annotated[
        str, typer.Argument(help="User name, or the ARN of a user, group or role.")
    ],
    actions: Annotated[
        list[str], typer.Argument(help="Actions, e.g. sagemaker-mlflow:GetRun.", show_default=False)
    ],
    resource: Annotated[
        list[str] | None,
        typer.Option(
            "--resource", help="Resource ARN (repeatable; default *).", show_default=False
        ),
    ] = None,
    data_dir: DataDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """What the principal's policies decide for each action (SimulatePrincipalPolicy)."""
    client = _iam(data_dir, endpoint_url)
    arn = principal
    if not principal.startswith("arn:"):
        arn = call(client, "get_user", UserName=principal)["User"]["Arn"]
    params: dict[str, Any] = {"PolicySourceArn": arn, "ActionNames": actions}
    if resource:
        params["ResourceArns"] = resource
    columns = ("action", "resource") if resource else ("action",)
    table = _table(*columns, "decision", "matched policy", keep=("action", "decision"))
    for result in _pages(client, "simulate_principal_policy", "EvaluationResults", **params):
        decision = result["EvalDecision"]
        colour = "green" if decision == "allowed" else "red"
        matched = ", ".join(
            f"{m['SourcePolicyId']} ({m['SourcePolicyType']})"
            for m in result.get("MatchedStatements", [])
        )
        where = [result.get("EvalResourceName", "*")] if resource else []
        table.add_row(
            result["EvalActionName"],
            *where,
            f"[{colour}]{decision}[/{colour}]",
            escape(matched),
        )
    console.print(table)
