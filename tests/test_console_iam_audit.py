"""The console's IAM and audit-trail pages, driven against the real daemon."""

from __future__ import annotations

import gzip
import html
import json
import re
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from support.console import ConsoleBrowser, launch, needs_chromium, screenshot, sign_in_page
from support.daemon import Daemon

_MALFORMED = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sagemaker:List*"}],
    }
)
# Sees tracking servers, may never delete one, and may look at itself in IAM.
_LOOK_ONLY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Look",
                "Effect": "Allow",
                "Action": ["sagemaker:List*", "sagemaker:Describe*"],
                "Resource": "*",
            },
            {
                "Sid": "NeverDelete",
                "Effect": "Deny",
                "Action": "sagemaker:Delete*",
                "Resource": "*",
            },
            {
                "Sid": "Self",
                "Effect": "Allow",
                "Action": ["iam:GetUser", "iam:ListAccessKeys", "iam:SimulatePrincipalPolicy"],
                "Resource": "arn:aws:iam::*:user/${aws:username}",
            },
        ],
    }
)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _decision(page: str, action: str) -> tuple[str, str]:
    """The effective-permissions row of `action`: its decision and what decided it."""
    row = re.search(
        rf"<code>{re.escape(action)}</code></th>\s*"
        r'<td><span class="decision d-\w+">(\w+)</span></td>\s*<td>(.*?)</td>',
        page,
        re.S,
    )
    assert row, f"no row for {action}"
    return row[1], re.sub(r"<[^>]+>", "", row[2])


def _field_error(page: str, member: str) -> str:
    found = re.search(rf'id="e-{member}" class="error">([^<]+)<', page)
    assert found, f"no error next to {member}"
    return html.unescape(found[1])


def _audit_rows(page: str) -> list[dict[str, str]]:
    """The audit table's rows: event id, operation, user, client."""
    rows = re.findall(
        r'<a href="/console/audit/events/([^"]+)"><time datetime="([^"]+)">.*?</a></td>\s*'
        r"<td>([^<]*)</td>\s*<th scope=\"row\"><span class=\"help\">[^<]*</span>([^<]+)</th>"
        r".*?<td title=\"[^\"]*\">([^<]*)</td>",
        page,
        re.S,
    )
    return [
        {"id": i, "time": t, "user": html.unescape(u), "event": e, "client": c}
        for i, t, u, e, c in rows
    ]


def test_iam_as_admin_then_signed_in_as_the_new_user(daemon: Daemon, tmp_path: Path) -> None:
    admin = ConsoleBrowser(daemon)
    name = _unique("console-iam")

    created = admin.post("/iam/users", {"UserName": name})
    assert created.status_code == 200 and created.url.endswith(f"/iam/users/{name}")
    assert f"Created user {name}." in created.text
    assert name in admin.get("/iam/users").text

    shown = admin.post(f"/iam/users/{name}/keys")
    assert shown.status_code == 200
    assert "This is the only time it is shown" in shown.text
    key = re.search(r'id="key-id" class="secret" value="([^"]+)"', shown.text)
    secret = re.search(r'id="key-secret" class="secret" value="([^"]+)"', shown.text)
    assert key and secret
    detail = admin.get(f"/iam/users/{name}").text
    assert key[1] in detail and secret[1] not in detail

    # A malformed document: IAM's reason next to the field, and what was typed is kept.
    bad = admin.post("/iam/policies", {"PolicyName": _unique("bad"), "PolicyDocument": _MALFORMED})
    assert bad.status_code == 400
    assert "MalformedPolicyDocument" in bad.text
    assert "must contain resources" in _field_error(bad.text, "PolicyDocument")
    assert _MALFORMED in html.unescape(bad.text)

    policy_name = _unique("look-only")
    made = admin.post("/iam/policies", {"PolicyName": policy_name, "PolicyDocument": _LOOK_ONLY})
    assert made.status_code == 200 and "/iam/policies/view?arn=" in made.url
    assert "NeverDelete" in made.text  # the document, pretty-printed
    arn = (
        f"arn:aws:iam::{daemon.client('sts').get_caller_identity()['Account']}:policy/{policy_name}"
    )
    attached = admin.post(f"/iam/users/{name}/attach", {"PolicyArn": arn})
    assert f"Attached {arn}." in attached.text

    page = attached.text
    assert _decision(page, "sagemaker:ListMlflowTrackingServers") == (
        "allowed",
        f"{policy_name} (user-managed)",
    )
    assert _decision(page, "sagemaker:CreateMlflowTrackingServer") == ("implicitDeny", "—")
    assert _decision(page, "sagemaker:DeleteMlflowTrackingServer")[0] == "explicitDeny"
    assert _decision(page, "sagemaker-mlflow:LogMetric")[0] == "implicitDeny"
    # The admin itself, for contrast.
    admin_page = admin.get("/iam/users/admin").text
    assert _decision(admin_page, "sagemaker-mlflow:LogMetric") == (
        "allowed",
        "AdministratorAccess (aws-managed)",
    )

    user = ConsoleBrowser(daemon, key[1], secret[1])
    denied = user.post(
        "/servers",
        {
            "TrackingServerName": _unique("denied"),
            "ArtifactStoreUri": f"file://{tmp_path}",
            "RoleArn": "arn:aws:iam::123456789012:role/mlfleet",
        },
    )
    assert denied.status_code == 400
    assert "AccessDeniedException" in denied.text
    assert f"user/{name} is not authorized to perform: sagemaker:CreateMlflowTrackingServer" in (
        html.unescape(denied.text)
    )
    assert "Traceback" not in denied.text

    # Its own page: what the policy lets it read, and IAM's refusal for the rest.
    own = user.get(f"/iam/users/{name}")
    assert own.status_code == 200
    assert key[1] in own.text  # ListAccessKeys on itself
    assert "AccessDenied: " in own.text and "iam:ListGroupsForUser" in own.text
    assert _decision(own.text, "sagemaker:DescribeMlflowTrackingServer")[0] == "allowed"
    assert _decision(own.text, "sagemaker:DeleteMlflowTrackingServer")[0] == "explicitDeny"
    everyone = user.get("/iam/users")
    assert everyone.status_code == 200 and "iam:ListUsers" in everyone.text

    # Deactivate, then delete the user with everything that refers to it.
    admin.post(f"/iam/users/{name}/keys/status", {"AccessKeyId": key[1], "Status": "Inactive"})
    assert user.get("/servers", allow_redirects=False).status_code == 303
    confirm = admin.get(f"/iam/users/{name}/delete").text
    assert f"detach policy {policy_name}" in confirm and f"delete access key {key[1]}" in confirm
    gone = admin.post(f"/iam/users/{name}/delete", {"confirm": name})
    assert f"Deleted user {name}." in gone.text
    with pytest.raises(Exception, match="NoSuchEntity"):
        daemon.client("iam").get_user(UserName=name)
    assert admin.post("/iam/policies/delete", {"PolicyArn": arn}).url.endswith("/iam/policies")


def test_groups_and_roles(daemon: Daemon) -> None:
    admin = ConsoleBrowser(daemon)
    group, role, user = _unique("grp"), _unique("role"), _unique("member")
    daemon.client("iam").create_user(UserName=user)
    assert admin.post("/iam/groups", {"GroupName": group}).url.endswith(f"/iam/groups/{group}")
    read_only = "arn:aws:iam::aws:policy/MlfleetReadOnlyAccess"
    admin.post(f"/iam/groups/{group}/attach", {"PolicyArn": read_only})
    # Membership from either side: the user's page, then the group's.
    user_page = admin.post(f"/iam/users/{user}/groups/add", {"GroupName": group}).text
    assert f"Added {user} to group {group}." in user_page
    # A user's permissions include its groups'.
    assert _decision(user_page, "sagemaker:ListMlflowTrackingServers") == (
        "allowed",
        "MlfleetReadOnlyAccess (aws-managed)",
    )
    page = admin.post(f"/iam/groups/{group}/members/remove", {"UserName": user}).text
    assert f"Removed {user} from group {group}." in page and "No members." in page
    page = admin.post(f"/iam/groups/{group}/members/add", {"UserName": user}).text
    assert f"/iam/users/{user}" in page and "MlfleetReadOnlyAccess" in page

    form = admin.get("/iam/roles").text
    assert ":root" in html.unescape(form) and "sts:AssumeRole" in form  # the default trust
    broken = admin.post("/iam/roles", {"RoleName": role, "AssumeRolePolicyDocument": "{"})
    assert broken.status_code == 400
    assert "Syntax errors in policy" in _field_error(broken.text, "AssumeRolePolicyDocument")
    trust = re.search(r'name="AssumeRolePolicyDocument"[^>]*>([^<]+)</textarea>', form)
    assert trust
    default_trust = html.unescape(trust[1])
    made = admin.post("/iam/roles", {"RoleName": role, "AssumeRolePolicyDocument": default_trust})
    assert made.url.endswith(f"/iam/roles/{role}") and "sts:AssumeRole" in made.text
    admin.post(f"/iam/roles/{role}/attach", {"PolicyArn": read_only})
    role_page = admin.get(f"/iam/roles/{role}").text
    assert _decision(role_page, "sagemaker-mlflow:GetRun")[0] == "allowed"
    assert _decision(role_page, "sagemaker-mlflow:LogMetric")[0] == "implicitDeny"

    assert (
        f"Deleted group {group}."
        in admin.post(f"/iam/groups/{group}/delete", {"confirm": group}).text
    )
    assert (
        f"Deleted role {role}." in admin.post(f"/iam/roles/{role}/delete", {"confirm": role}).text
    )
    policies = admin.get("/iam/policies").text
    assert "MlfleetDataScientistAccess" in policies and "AWS managed" in policies


def test_audit_trail_filters_pages_and_exports(daemon: Daemon) -> None:
    admin = ConsoleBrowser(daemon)
    name = _unique("audited")
    admin.post("/iam/users", {"UserName": name})
    user_arn = daemon.client("iam").get_user(UserName=name)["User"]["Arn"]

    by_operation = admin.get("/audit", params={"event": "CreateUser"}).text
    rows = _audit_rows(by_operation)
    assert rows and {r["event"] for r in rows} == {"CreateUser"}
    newest = rows[0]
    assert newest["user"] == "admin" and newest["client"] == "mlfleet-console"
    record = admin.get(f"/audit/events/{newest['id']}").text
    assert f"&#34;userName&#34;: &#34;{name}&#34;" in record
    assert "&#34;userAgent&#34;: &#34;mlfleet-console (" in record

    # Two filters: one goes to LookupEvents, the page applies the other, and says so.
    both = admin.get("/audit", params={"user": "admin", "resource": user_arn}).text
    assert "LookupEvents was asked for resource arn" in both
    assert [r["event"] for r in _audit_rows(both)][-1] == "CreateUser"
    nobody = admin.get("/audit", params={"user": "someone-else", "resource": user_arn}).text
    assert _audit_rows(nobody) == [] and "No records match" in nobody

    # Paging: more than a page of the admin's calls (each IAM page reads several things).
    for _ in range(6):
        admin.get(f"/iam/users/{name}")
    first = admin.get("/audit", params={"user": "admin"}).text
    older_link = re.search(r'<a class="button" href="(/console/audit\?[^"]+)">Older</a>', first)
    assert older_link
    second = admin.http.get(daemon.url + html.unescape(older_link[1])).text
    first_rows, second_rows = _audit_rows(first), _audit_rows(second)
    assert second_rows and not {r["id"] for r in first_rows} & {r["id"] for r in second_rows}
    assert second_rows[0]["time"] <= first_rows[-1]["time"]

    # Time range: UTC datetime-local values; nonsense is explained next to its field.
    future = admin.get("/audit", params={"start": "2999-01-01T00:00"}).text
    assert _audit_rows(future) == [] and "No records match" in future
    assert "not a date and time" in _field_error(
        admin.get("/audit", params={"end": "soon"}).text, "end"
    )
    backwards = admin.get("/audit", params={"start": "2024-02-01T00:00", "end": "2024-01-01T00:00"})
    assert "InvalidTimeRangeException" in backwards.text

    download = admin.get("/audit/export", params={"event": "CreateUser", "user": "admin"})
    assert download.status_code == 200
    assert download.headers["Content-Disposition"].startswith("attachment; filename=")
    records = json.loads(gzip.decompress(download.content))["Records"]
    assert {r["eventName"] for r in records} == {"CreateUser"}
    mine = [r for r in records if r["requestParameters"]["userName"] == name]
    assert len(mine) == 1 and mine[0]["userAgent"].startswith("mlfleet-console")


@needs_chromium
def test_iam_and_audit_in_chromium(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    name = _unique("browsed")
    iam.create_user(UserName=name)
    iam.attach_user_policy(
        UserName=name, PolicyArn="arn:aws:iam::aws:policy/MlfleetDataScientistAccess"
    )
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        sign_in_page(page, daemon)
        page.get_by_role("link", name="IAM").click()
        page.get_by_role("navigation", name="IAM").get_by_role("link", name="Users").click()
        expect(page.get_by_role("heading", name="Users")).to_be_visible()
        screenshot(page, "iam-users")

        page.get_by_role("link", name=name).click()
        expect(page.get_by_role("heading", name=f"User {name}")).to_be_visible()
        allowed = page.get_by_role("row", name=re.compile(r"sagemaker-mlflow:LogMetric\b"))
        expect(allowed).to_contain_text("allowed")
        expect(
            page.get_by_role("row", name=re.compile("sagemaker:DeleteEndpoint\\b"))
        ).to_contain_text("implicitDeny")
        screenshot(page, "iam-user")

        page.get_by_role("link", name="Audit trail").click()
        page.get_by_label("User", exact=True).fill("admin")
        page.get_by_label("Operation", exact=True).fill("AttachUserPolicy")
        page.get_by_role("button", name="Filter").click()
        expect(page.get_by_text("LookupEvents was asked for user")).to_be_visible()
        first = page.get_by_role("row").nth(1)
        expect(first).to_contain_text("AttachUserPolicy")
        expect(first).to_contain_text(name)
        screenshot(page, "audit")
        browser.close()
