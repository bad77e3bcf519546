"""The console's event rules and dead letters, model registry and endpoint pages, on a real
daemon: a real HTTP receiver, a real MLflow model behind a real endpoint."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from support.aws import unique
from support.console import ConsoleBrowser, launch, needs_chromium, screenshot, sign_in_page
from support.daemon import Daemon
from support.events import Receiver, route_to, wait_received
from support.iam import READ_ONLY, new_user, policy
from support.registry import new_group, new_versions
from support.serving import FEATURES, log_model, wait_endpoint
from support.waiting import wait_for


@pytest.fixture(scope="module")
def registered(daemon: Daemon, serving_server: str) -> tuple[str, Any]:
    """An MLflow model version registered as a package (PendingManualApproval), and the model."""
    return log_model(daemon, serving_server, [0, 1, 0, 1, 1])


@pytest.fixture(scope="module")
def endpoint(daemon: Daemon, registered: tuple[str, Any]) -> Iterator[str]:
    sm = daemon.client()
    sm.update_model_package(ModelPackageArn=registered[0], ModelApprovalStatus="Approved")
    name = unique("console")
    sm.create_model(ModelName=name, PrimaryContainer={"ModelPackageName": registered[0]})
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{"VariantName": "only", "ModelName": name, "InitialInstanceCount": 1}],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    assert wait_endpoint(daemon, name)["EndpointStatus"] == "InService"
    yield name
    if sm.list_endpoints(NameContains=name)["Endpoints"]:
        sm.delete_endpoint(EndpointName=name)


def flashes(html: str) -> list[str]:
    return re.findall(r'<p class="flash [a-z]+" role="[a-z]+">([^<]*)</p>', html)


def delivery_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'name="id" value="(\d+)"', html)]


# --- events --------------------------------------------------------------------------------------


def test_a_bad_pattern_is_shown_next_to_its_field(daemon: Daemon) -> None:
    console = ConsoleBrowser(daemon)
    name = unique("console-rule")
    answer = console.post(
        "/events/rules", {"Name": name, "EventPattern": '{"source": "aws.sagemaker"}'}
    )
    assert answer.status_code == 400
    beside = re.search(r'<small id="e-EventPattern" class="error">([^<]*)</small>', answer.text)
    assert beside and "Event pattern is not valid" in beside[1]
    assert "InvalidEventPatternException" in answer.text
    assert 'aria-describedby="h-EventPattern e-EventPattern"' in answer.text
    # What was typed is kept, to be corrected.
    assert "{&#34;source&#34;: &#34;aws.sagemaker&#34;}" in answer.text
    assert name not in console.get("/events").text


def test_rule_create_target_disable_and_delete(daemon: Daemon, receiver: Receiver) -> None:
    console = ConsoleBrowser(daemon)
    events = daemon.client("events")
    name = unique("console-rule")
    pattern = {"source": ["com.console"], "detail-type": [{"prefix": "order"}]}
    created = console.post(
        "/events/rules",
        {
            "Name": name,
            "EventPattern": json.dumps(pattern),
            "Description": "orders",
            "State": "ENABLED",
        },
    )
    assert created.url.endswith(f"/console/events/rules/{name}")
    assert f"Created rule {name}" in created.text
    # The pattern is shown indented for reading.
    assert "&#34;source&#34;: [\n    &#34;com.console&#34;\n  ]" in created.text
    assert events.describe_rule(Name=name)["Description"] == "orders"
    assert f'href="/console/events/rules/{name}"' in console.get("/events").text

    # Another rule's destination (made with boto3) is offered as this rule's target.
    other = route_to(daemon, receiver, {"source": ["com.elsewhere"]})
    [destination] = events.list_targets_by_rule(Rule=other)["Targets"]
    assert f'<option value="{destination["Arn"]}">' in console.get(f"/events/rules/{name}").text
    added = console.post(
        f"/events/rules/{name}/targets",
        {"Id": "hook", "Arn": destination["Arn"], "MaximumRetryAttempts": "3"},
    )
    assert f"Target hook added to {name}" in added.text
    [target] = events.list_targets_by_rule(Rule=name)["Targets"]
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 3}
    # PutTargets answers 200 with the entries it refused: each reason is shown.
    refused = console.post(
        f"/events/rules/{name}/targets", {"Id": "nowhere", "Arn": destination["Arn"] + "x"}
    )
    assert any(f.startswith("ResourceNotFoundException: ") for f in flashes(refused.text))
    assert [t["Id"] for t in events.list_targets_by_rule(Rule=name)["Targets"]] == ["hook"]

    console.post(f"/events/rules/{name}/disable")
    assert events.describe_rule(Name=name)["State"] == "DISABLED"
    console.post(f"/events/rules/{name}/enable")
    assert events.describe_rule(Name=name)["State"] == "ENABLED"

    mistyped = console.post(f"/events/rules/{name}/delete", {"confirm": name[:-1]})
    assert mistyped.status_code == 400
    assert events.list_rules(NamePrefix=name)["Rules"] != []
    deleted = console.post(f"/events/rules/{name}/delete", {"confirm": name})
    assert deleted.url.endswith("/console/events")
    assert f"Deleted rule {name}" in deleted.text
    assert events.list_rules(NamePrefix=name)["Rules"] == []


def test_a_dead_letter_is_listed_and_redriven(daemon: Daemon, receiver: Receiver) -> None:
    source = unique("com.console-dlq")
    rule = route_to(daemon, receiver, {"source": [source]}, RetryPolicy={"MaximumRetryAttempts": 0})
    receiver.status = 500
    daemon.client("events").put_events(
        Entries=[{"Source": source, "DetailType": "x", "Detail": json.dumps({"k": 1})}]
    )
    console = ConsoleBrowser(daemon)

    def dead_on_rule_page() -> str | None:
        page = console.get(f"/events/rules/{rule}").text
        return page if 'class="status s-dead"' in page else None

    page = wait_for(dead_on_rule_page, 30, what="the delivery to be dead-lettered")
    assert "gave up after 1 attempts: HTTP 500" in page
    [delivery] = delivery_ids(page)
    assert source in console.get("/events/dead-letters").text

    # Seeing needs events:DescribeRule on the rule; redriving also events:PutEvents.
    arn = f"arn:aws:events:us-east-1:123456789012:rule/{rule}"
    onlooker = new_user(
        daemon,
        inline=policy({"Effect": "Allow", "Action": "events:DescribeRule", "Resource": arn}),
    )
    as_onlooker = ConsoleBrowser(daemon, onlooker["AccessKeyId"], onlooker["SecretAccessKey"])
    assert source in as_onlooker.get("/events/dead-letters").text
    denied = as_onlooker.post("/events/dead-letters/redrive", {"id": str(delivery)})
    [message] = flashes(denied.text)
    assert message.startswith("AccessDeniedException: ")
    assert "events:PutEvents" in message
    stranger = new_user(daemon, READ_ONLY)
    as_stranger = ConsoleBrowser(daemon, stranger["AccessKeyId"], stranger["SecretAccessKey"])
    assert source not in as_stranger.get("/events/dead-letters").text
    assert (
        "events:DescribeRule"
        in flashes(as_stranger.post("/events/dead-letters/redrive", {"id": str(delivery)}).text)[0]
    )

    receiver.status = 200
    redriven = console.post("/events/dead-letters/redrive", {"id": str(delivery), "rule": rule})
    assert redriven.url.endswith(f"/console/events/rules/{rule}")
    assert "Redriven: 1 delivery;" in redriven.text
    [body] = wait_received(receiver, 1)
    assert body["detail"] == {"k": 1}
    wait_for(
        lambda: 'class="status s-delivered"' in console.get(f"/events/rules/{rule}").text,
        30,
        what="the redriven delivery to show as delivered",
    )
    assert source not in console.get("/events/dead-letters").text

    # Each redrive, refused or done, is in the audit trail like an EventBridge call.
    def redrives() -> list[dict[str, Any]] | None:
        found = daemon.client("cloudtrail").lookup_events(
            LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "RedriveDeadLetters"}]
        )["Events"]
        records = [json.loads(e["CloudTrailEvent"]) for e in found]
        mine = [r for r in records if r["requestParameters"] == {"ids": [delivery]}]
        return mine if len(mine) == 3 else None

    records = wait_for(redrives, 10, what="three RedriveDeadLetters records")
    by_user = {r["userIdentity"].get("userName"): r for r in records}
    assert by_user[onlooker["UserName"]]["errorCode"] == "AccessDeniedException"
    assert by_user[stranger["UserName"]]["errorCode"] == "AccessDeniedException"
    done = next(r for r in records if "errorCode" not in r)
    assert done["eventSource"] == "events.amazonaws.com"
    assert done["readOnly"] is False
    assert done["responseElements"] == {"redriven": 1}
    assert {"accountId": "123456789012", "type": "AWS::Events::Rule", "ARN": arn} in done[
        "resources"
    ]


# --- model registry ------------------------------------------------------------------------------


def test_approve_and_reject_a_registered_model(
    daemon: Daemon, serving_server: str, registered: tuple[str, Any]
) -> None:
    sm = daemon.client()
    arn = registered[0]
    package = sm.describe_model_package(ModelPackageName=arn)
    group = package["ModelPackageGroupName"]
    model_name = package["CustomerMetadataProperties"]["mlflow.registered_model_name"]
    console = ConsoleBrowser(daemon)
    assert f'href="/console/registry/{group}"' in console.get("/registry").text
    page = console.get(f"/registry/{group}").text
    assert 'class="status s-pendingmanualapproval"' in page
    assert f"models:/{model_name}/1 on tracking server {serving_server}" in page

    rejected = console.post(
        f"/registry/{group}/approval",
        {
            "ModelPackageArn": arn,
            "ModelApprovalStatus": "Rejected",
            "ApprovalDescription": "worse than the last one",
        },
    )
    assert rejected.url.endswith(f"/console/registry/{group}")
    described = sm.describe_model_package(ModelPackageName=arn)
    assert described["ModelApprovalStatus"] == "Rejected"
    assert described["ApprovalDescription"] == "worse than the last one"

    # A reader may look, not approve: the refusal names the action.
    reader = new_user(daemon, READ_ONLY)
    as_reader = ConsoleBrowser(daemon, reader["AccessKeyId"], reader["SecretAccessKey"])
    denied = as_reader.post(
        f"/registry/{group}/1/approval",
        {"ModelPackageArn": arn, "ModelApprovalStatus": "Approved"},
    )
    [message] = flashes(denied.text)
    assert message.startswith("AccessDeniedException: ") and "UpdateModelPackage" in message
    assert sm.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"] == "Rejected"

    approved = console.post(
        f"/registry/{group}/1/approval", {"ModelPackageArn": arn, "ModelApprovalStatus": "Approved"}
    )
    assert approved.url.endswith(f"/console/registry/{group}/1")
    assert 'class="status s-approved"' in approved.text
    assert sm.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"] == "Approved"
    assert "mlflow.tracking_server_arn" in approved.text  # the package page's metadata


# --- endpoints -----------------------------------------------------------------------------------


def test_invoke_an_endpoint_from_its_page(
    daemon: Daemon, endpoint: str, registered: tuple[str, Any]
) -> None:
    console = ConsoleBrowser(daemon)
    assert f'href="/console/endpoints/{endpoint}"' in console.get("/endpoints").text
    page = console.get(f"/endpoints/{endpoint}").text
    assert 'class="status s-inservice"' in page
    assert "<td>1 / 1</td>" in page  # the variant's instances, current / desired

    answer = console.post(
        f"/endpoints/{endpoint}/invoke",
        {"Body": json.dumps({"inputs": FEATURES.tolist()}), "ContentType": "application/json"},
    )
    assert answer.status_code == 200
    shown = re.search(
        r'<section class="card answer"[^>]*>.*?<pre class="code">(.*?)</pre>', answer.text, re.S
    )
    assert shown, answer.text
    predictions = json.loads(html.unescape(shown[1]))["predictions"]
    assert predictions == registered[1].predict(FEATURES).tolist()

    model_error = console.post(
        f"/endpoints/{endpoint}/invoke",
        {"Body": '{"nonsense": 1}', "ContentType": "application/json"},
    )
    assert model_error.status_code == 424
    assert "ModelError: Received client error (400)" in model_error.text

    reader = new_user(daemon, READ_ONLY)
    as_reader = ConsoleBrowser(daemon, reader["AccessKeyId"], reader["SecretAccessKey"])
    denied = as_reader.post(
        f"/endpoints/{endpoint}/invoke", {"Body": "{}", "ContentType": "application/json"}
    )
    assert denied.status_code == 403
    assert "AccessDeniedException" in denied.text and "sagemaker:InvokeEndpoint" in denied.text


@needs_chromium
def test_registry_events_and_endpoint_pages_in_chromium(daemon: Daemon, endpoint: str) -> None:
    """Approve a version by clicking, create a rule, invoke an endpoint: as a person would."""
    from playwright.sync_api import expect, sync_playwright

    sm = daemon.client()
    group = new_group(sm, ModelPackageGroupDescription="churn models")
    [arn] = new_versions(sm, group, 1, ModelPackageDescription="gradient boosting, May data")
    rule = unique("console-walk")
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            page = context.new_page()
            sign_in_page(page, daemon)

            page.get_by_role("link", name="Model registry").click()
            page.get_by_role("link", name=group).click()
            row = page.get_by_role("row").filter(has_text="gradient boosting")
            expect(row.locator(".status")).to_have_text("PendingManualApproval")
            row.get_by_label("Note on version 1").fill("holdout AUC 0.91")
            row.get_by_role("button", name="Approve version 1").click()
            expect(row.locator(".status")).to_have_text("Approved")
            screenshot(page, "registry")
            assert sm.describe_model_package(ModelPackageName=arn)["ApprovalDescription"] == (
                "holdout AUC 0.91"
            )

            page.get_by_role("link", name="Events", exact=True).click()
            page.get_by_role("link", name="Create rule").click()
            page.get_by_label("Name").fill(rule)
            page.get_by_label("Event pattern").fill(
                '{"source": ["aws.sagemaker"], "detail-type": ["SageMaker Endpoint State Change"]}'
            )
            page.get_by_label("Description").fill("endpoint changes")
            page.get_by_role("button", name="Create", exact=True).click()
            expect(page.get_by_role("heading", name=f"Rule {rule}")).to_be_visible()
            screenshot(page, "events")

            page.get_by_role("link", name="Endpoints", exact=True).click()
            page.get_by_role("link", name=endpoint).click()
            page.get_by_label("Request body").fill(json.dumps({"inputs": FEATURES[:2].tolist()}))
            page.get_by_role("button", name="Invoke", exact=True).click()
            answer = page.get_by_role("region", name="The model's answer")
            expect(answer).to_contain_text("predictions")
            expect(answer).to_contain_text("only")
            screenshot(page, "endpoint")

            phone = browser.new_context(viewport={"width": 375, "height": 740})
            phone.add_cookies(context.cookies())
            small = phone.new_page()
            for path in (f"registry/{group}", f"events/rules/{rule}", f"endpoints/{endpoint}"):
                small.goto(f"{daemon.url}/console/{path}")
                # Nothing but tables scrolls sideways at a phone's width.
                assert small.evaluate("document.documentElement.scrollWidth") <= 375, path
        finally:
            browser.close()
    daemon.client("events").delete_rule(Name=rule)


def test_delete_an_endpoint_from_its_page(daemon: Daemon, endpoint: str) -> None:
    console = ConsoleBrowser(daemon)
    asked = console.get(f"/endpoints/{endpoint}/delete")
    assert f"Delete endpoint {endpoint}?" in asked.text
    mistyped = console.post(f"/endpoints/{endpoint}/delete", {"confirm": "something else"})
    assert mistyped.status_code == 400
    assert "Type the endpoint&#39;s name exactly" in mistyped.text
    deleted = console.post(f"/endpoints/{endpoint}/delete", {"confirm": endpoint})
    assert deleted.url.endswith("/console/endpoints")
    assert f"Deleting endpoint {endpoint}" in deleted.text
    sm = daemon.client()
    wait_for(
        lambda: not sm.list_endpoints(NameContains=endpoint)["Endpoints"],
        60,
        what="the endpoint to be gone",
    )
