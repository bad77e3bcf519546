"""The web console: sign-in, sessions, CSRF, and the tracking-server pages in a real browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from mlflow import MlflowClient

from support.console import ConsoleBrowser, launch, needs_chromium, screenshot, sign_in_page
from support.daemon import Daemon
from support.waiting import wait_for


def _new_user(daemon: Daemon, *policies: str) -> tuple[str, str, str]:
    """A user with `policies` attached: its name, access key id and secret."""
    iam = daemon.client("iam")
    name = f"console-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    for policy in policies:
        iam.attach_user_policy(UserName=name, PolicyArn=f"arn:aws:iam::aws:policy/{policy}")
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return name, key["AccessKeyId"], key["SecretAccessKey"]


def test_pages_need_a_session(daemon: Daemon) -> None:
    answer = requests.get(f"{daemon.url}/console/servers?x=1", allow_redirects=False)
    assert answer.status_code == 303
    target = urlsplit(answer.headers["Location"])
    assert target.path == "/console/sign-in"
    assert parse_qs(target.query)["next"] == ["/console/servers?x=1"]
    # A form posted without a session is refused, not redirected into a sign-in.
    assert requests.post(f"{daemon.url}/console/servers", data={}).status_code == 401


def test_sign_in_sets_a_strict_http_only_cookie(daemon: Daemon) -> None:
    http = requests.Session()
    form = http.get(f"{daemon.url}/console/sign-in")
    assert "default-src 'self'" in form.headers["Content-Security-Policy"]
    assert form.headers["X-Frame-Options"] == "DENY"
    key, secret = daemon.credentials
    answer = http.post(
        f"{daemon.url}/console/sign-in",
        data={
            "csrf": ConsoleBrowser.csrf_of(form.text),
            "access_key_id": key,
            "secret_access_key": secret,
            "next": "https://elsewhere.example/steal",
        },
        allow_redirects=False,
    )
    assert answer.status_code == 303
    # No open redirect: only console paths are followed after sign-in.
    assert answer.headers["Location"] == "/console/servers"
    cookie = next(
        c for c in answer.raw.headers.getlist("Set-Cookie") if c.startswith("mlfleet_console=")
    )
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie


def test_wrong_secret_is_refused_without_saying_which_part(daemon: Daemon) -> None:
    http = requests.Session()
    token = ConsoleBrowser.csrf_of(http.get(f"{daemon.url}/console/sign-in").text)
    key, _ = daemon.credentials
    answer = http.post(
        f"{daemon.url}/console/sign-in",
        data={"csrf": token, "access_key_id": key, "secret_access_key": "wrong"},
        allow_redirects=False,
    )
    assert answer.status_code == 401
    assert "Sign-in failed" in answer.text
    assert "mlfleet_console" not in http.cookies


def test_sign_in_form_needs_its_csrf_token(daemon: Daemon) -> None:
    key, secret = daemon.credentials
    answer = requests.post(
        f"{daemon.url}/console/sign-in",
        data={"csrf": "guessed", "access_key_id": key, "secret_access_key": secret},
        allow_redirects=False,
    )
    assert answer.status_code == 403


def test_forms_need_the_session_csrf_token_and_same_origin(daemon: Daemon) -> None:
    console = ConsoleBrowser(daemon)
    name = f"csrf-{uuid.uuid4().hex[:6]}"
    no_token = console.http.post(
        f"{console.base}/servers", data={"TrackingServerName": name}, allow_redirects=False
    )
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    foreign = console.post(
        "/servers",
        {"TrackingServerName": name},
        headers={"Origin": "https://attacker.example"},
        allow_redirects=False,
    )
    assert foreign.status_code == 403
    with pytest.raises(Exception, match="ResourceNotFound"):
        daemon.client().describe_mlflow_tracking_server(TrackingServerName=name)


def test_validation_messages_appear_next_to_their_field(daemon: Daemon) -> None:
    console = ConsoleBrowser(daemon)
    answer = console.post(
        "/servers",
        {
            "TrackingServerName": "not a valid name!",
            "ArtifactStoreUri": "file:///tmp/x",
            "RoleArn": "arn:aws:iam::123456789012:role/mlfleet",
            "TrackingServerSize": "Small",
        },
    )
    assert answer.status_code == 400
    field_error = re.search(r'id="e-TrackingServerName" class="error">([^<]+)<', answer.text)
    assert field_error, answer.text
    assert "regular expression pattern" in field_error[1]
    # What was typed is kept, so the user fixes it instead of starting over.
    assert 'value="not a valid name!"' in answer.text


def test_one_time_link_from_the_cli(daemon: Daemon) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "mlfleet", "console", "--data-dir", str(daemon.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert printed.startswith(f"{daemon.url}/console/sign-in/"), printed
    http = requests.Session()
    first = http.get(printed)
    assert first.status_code == 200 and first.url.endswith("/console/servers")
    assert "Tracking servers" in first.text
    again = requests.get(printed)
    assert again.status_code == 403 and "already used" in again.text


def test_sign_out_ends_the_session(daemon: Daemon) -> None:
    console = ConsoleBrowser(daemon)
    assert console.get("/servers").status_code == 200
    cookie = console.http.cookies["mlfleet_console"]
    console.post("/sign-out")
    stale = requests.get(
        f"{console.base}/servers", cookies={"mlfleet_console": cookie}, allow_redirects=False
    )
    assert stale.status_code == 303 and "/console/sign-in" in stale.headers["Location"]


def test_a_deactivated_key_signs_its_browser_out(daemon: Daemon) -> None:
    user, key, secret = _new_user(daemon, "MlfleetReadOnlyAccess")
    console = ConsoleBrowser(daemon, key, secret)
    assert console.get("/servers", allow_redirects=False).status_code == 200
    daemon.client("iam").update_access_key(UserName=user, AccessKeyId=key, Status="Inactive")
    assert console.get("/servers", allow_redirects=False).status_code == 303


def test_denied_actions_show_the_reason(daemon: Daemon, tmp_path: Path) -> None:
    _, key, secret = _new_user(daemon, "MlfleetReadOnlyAccess")
    console = ConsoleBrowser(daemon, key, secret)
    answer = console.post(
        "/servers",
        {
            "TrackingServerName": f"denied-{uuid.uuid4().hex[:6]}",
            "ArtifactStoreUri": f"file://{tmp_path}",
            "RoleArn": "arn:aws:iam::123456789012:role/mlfleet",
        },
    )
    assert answer.status_code == 400
    assert "AccessDeniedException" in answer.text
    assert "sagemaker:CreateMlflowTrackingServer" in answer.text
    assert "Traceback" not in answer.text


def test_console_calls_are_audited_as_the_signed_in_user(daemon: Daemon) -> None:
    _, key, secret = _new_user(daemon, "MlfleetReadOnlyAccess")
    ConsoleBrowser(daemon, key, secret).get("/servers")
    trail = daemon.client("cloudtrail")

    def listed() -> list[dict[str, Any]]:
        events = trail.lookup_events(
            LookupAttributes=[{"AttributeKey": "AccessKeyId", "AttributeValue": key}]
        )["Events"]
        return [e for e in events if e["EventName"] == "ListMlflowTrackingServers"]

    event = wait_for(listed, 10, what="the console's call in the audit trail")[0]
    assert json.loads(event["CloudTrailEvent"])["userAgent"].startswith("mlfleet-console")


@needs_chromium
def test_tracking_server_journey_in_chromium(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sign in, create a server, watch it settle, see the MLflow client's run, stop and start."""
    from playwright.sync_api import expect, sync_playwright

    name = f"console-{uuid.uuid4().hex[:6]}"
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            page = context.new_page()
            page.goto(f"{daemon.url}/console/servers")
            screenshot(page, "sign-in")
            sign_in_page(page, daemon)

            # Keyboard users reach the skip link first.
            page.keyboard.press("Tab")
            expect(page.locator(":focus")).to_have_text("Skip to content")

            page.get_by_role("link", name="Create tracking server").click()
            page.get_by_label("Name").fill(name)
            page.get_by_label("Artifact store URI").fill(f"file://{tmp_path}")
            page.get_by_label("Size").select_option("Small")
            page.get_by_label("Tags").fill("team=console")
            screenshot(page, "create-server")
            page.get_by_role("button", name="Create").click()
            expect(page.get_by_role("heading", name=name)).to_be_visible()
            # The page refreshes itself while the status settles.
            expect(page.locator(".facts .status")).to_have_text("Created", timeout=120_000)
            screenshot(page, "server")

            key, secret = daemon.credentials
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
            client = MlflowClient(tracking_uri=f"{daemon.url}/mlflow/{name}")
            experiment = f"from-the-client-{uuid.uuid4().hex[:4]}"
            client.create_experiment(experiment)

            with context.expect_page() as opened:
                page.get_by_role("button", name="Open MLflow UI").click()
            ui = opened.value
            expect(ui.get_by_text(experiment).first).to_be_visible(timeout=60_000)
            screenshot(ui, "mlflow-ui")
            ui.close()

            page.once("dialog", lambda dialog: dialog.accept())
            page.get_by_role("button", name="Stop").click()
            expect(page.locator(".facts .status")).to_have_text("Stopped", timeout=60_000)
            expect(page.get_by_role("button", name="Open MLflow UI")).to_be_disabled()
            page.get_by_role("button", name="Start").click()
            expect(page.locator(".facts .status")).to_have_text("Started", timeout=120_000)

            # The audit page, filtered to this server, shows each thing the browser did.
            arn = f"arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/{name}"
            page.goto(f"{daemon.url}/console/audit?resource={arn}")
            for operation in (
                "CreateMlflowTrackingServer",
                "CreatePresignedMlflowTrackingServerUrl",
                "StopMlflowTrackingServer",
                "StartMlflowTrackingServer",
            ):
                row = page.get_by_role("rowheader", name=f"sagemaker:{operation}", exact=True)
                expect(row.first).to_be_visible()
            screenshot(page, "audit-server")

            page.get_by_role("link", name="Tracking servers").click()
            expect(page.get_by_role("link", name=name)).to_be_visible()
            screenshot(page, "servers")
            phone = browser.new_context(viewport={"width": 375, "height": 740})
            phone.add_cookies(context.cookies())
            small = phone.new_page()
            small.goto(f"{daemon.url}/console/servers")
            expect(small.get_by_role("link", name=name)).to_be_visible()
            # Nothing but the table scrolls sideways at a phone's width.
            assert small.evaluate("document.documentElement.scrollWidth") <= 375
            screenshot(small, "servers-phone")
        finally:
            browser.close()

    # Each action the browser took is in the audit trail, as the admin, from the console.
    trail = daemon.client("cloudtrail")
    for operation in (
        "CreateMlflowTrackingServer",
        "CreatePresignedMlflowTrackingServerUrl",
        "StopMlflowTrackingServer",
        "StartMlflowTrackingServer",
    ):

        def recorded(operation: str = operation) -> list[dict[str, Any]]:
            events = trail.lookup_events(
                LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": operation}]
            )["Events"]
            return [
                e
                for e in events
                if name in e["CloudTrailEvent"] and "mlfleet-console" in e["CloudTrailEvent"]
            ]

        wait_for(recorded, 10, what=f"{operation} of {name} in the audit trail")
    daemon.client().delete_mlflow_tracking_server(TrackingServerName=name)
