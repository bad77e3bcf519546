"""No secret is ever echoed: not in an answer, the daemon's logs, the audit trail or the console.

Every way in is driven with distinctive secrets, wrong and right: SigV4 signed with a wrong secret
(control plane and gateway), a wrong and an expired session token, HTTP Basic with a wrong and the
right secret to the control plane and to a tracking server's MLflow API, presigned URL tokens
(redeemed, reused, made up), the console's sign-in (wrong secret, wrong session token, the right
key, a one-time link used twice), and the API key, password and secret header of EventBridge
connections, created and updated, once with a value the model refuses. Each answer is checked as
it comes; then each secret, in every form it travelled (as is, base64, the base64 of the Basic
pair carrying it, URL-encoded), is searched for in the daemon's logs, in every record LookupEvents
returns and ``mlfleet audit export`` writes, and in the console's pages of a signed-in session.
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import boto3
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from support.console import ConsoleBrowser
from support.daemon import Daemon

ACCOUNT = "123456789012"
REGION = "us-east-1"
SEARCH = "/api/2.0/mlflow/experiments/search"


def made_up(kind: str) -> str:
    # Letters and digits only, so each form below is unambiguous.
    return f"{kind}{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def basic(key: str, secret: str) -> str:
    return "Basic " + b64(f"{key}:{secret}")


@dataclass
class Secrets:
    """Every secret sent or received, by what it is, in each form it may be found in."""

    forms: dict[str, set[str]] = field(default_factory=dict)
    started: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(minutes=1))

    def add(self, what: str, secret: str, *, key: str | None = None) -> str:
        found = self.forms.setdefault(what, set())
        found |= {secret, b64(secret), quote(secret, safe=""), quote_plus(secret)}
        if key is not None:
            found.add(b64(f"{key}:{secret}"))
        return secret

    def leaks(self, text: str) -> list[str]:
        return sorted(what for what, forms in self.forms.items() if any(f in text for f in forms))

    def assert_none_in(self, where: str, texts: Iterable[str]) -> None:
        leaked = {what for text in texts for what in self.leaks(text)}
        assert not leaked, f"secrets found in {where}: {sorted(leaked)}"


class Caller:
    """The raw requests the clients would not send (Basic to the control plane, SigV4 by hand
    to the gateway), each answer kept, status, headers and body, to be searched."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.answers: list[str] = []

    def check(self, answer: requests.Response) -> requests.Response:
        self.answers.append(f"{answer.status_code} {answer.headers} {answer.text}")
        return answer

    def control_plane(self, authorization: str, *, query: bool) -> requests.Response:
        """ListUsers over the query protocol, or ListMlflowTrackingServers over AWS JSON."""
        json_call = {
            "X-Amz-Target": "SageMaker.ListMlflowTrackingServers",
            "Content-Type": "application/x-amz-json-1.1",
        }
        query_call = {"Content-Type": "application/x-www-form-urlencoded"}
        answer = requests.post(
            f"{self.daemon.url}/",
            data="Action=ListUsers&Version=2010-05-08" if query else "{}",
            headers={**(query_call if query else json_call), "Authorization": authorization},
            timeout=30,
        )
        return self.check(answer)

    def gateway(
        self, server: dict[str, Any], headers: dict[str, str], cookies: dict[str, str] | None = None
    ) -> requests.Response:
        answer = requests.post(
            server["TrackingServerUrl"] + SEARCH,
            json={"max_results": 1},
            headers=headers,
            cookies=cookies,
            timeout=30,
        )
        return self.check(answer)

    def gateway_signed(self, server: dict[str, Any], key: str, secret: str) -> requests.Response:
        """The sagemaker-mlflow plugin's way: SigV4, routed by the server's ARN."""
        url = f"{self.daemon.url}{SEARCH}"
        request = AWSRequest(
            method="POST",
            url=url,
            data=b'{"max_results": 1}',
            headers={
                "Content-Type": "application/json",
                "x-mlflow-sm-tracking-server-arn": server["TrackingServerArn"],
            },
        )
        SigV4Auth(Credentials(key, secret), "sagemaker-mlflow", REGION).add_auth(request)
        answer = requests.post(url, data=request.body, headers=dict(request.headers), timeout=30)
        return self.check(answer)


def refused(call: Any, **params: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return dict(caught.value.response)


def as_key(daemon: Daemon, service: str, key: str, secret: str, token: str | None = None) -> Any:
    return boto3.client(
        service,
        endpoint_url=daemon.url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        # Durations under AWS's 900 s floor are the daemon's to accept (see below).
        config=Config(parameter_validation=False),
    )


@dataclass
class Driven:
    """The secrets, every answer that should hold none, and the user and role made."""

    secrets: Secrets
    answers: list[str]
    user: str
    key: str
    role: str


@pytest.fixture(scope="module")
def driven(daemon: Daemon, shared_server: dict[str, Any]) -> Driven:
    """Every authentication path, driven once; what came back is kept for the tests."""
    secrets = Secrets()
    caller = Caller(daemon)
    iam = daemon.client("iam")
    admin_key, _ = daemon.credentials

    # A user of its own, allowed everything: its secret is the "right" one below.
    user = f"secrets-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="all",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    created = iam.create_access_key(UserName=user)["AccessKey"]
    key = created["AccessKeyId"]
    secret = secrets.add("user secret", created["SecretAccessKey"], key=key)
    caller.answers.append(json.dumps(iam.get_user(UserName=user), default=str))

    # SigV4 with a wrong secret: the secret itself never travels, its signature does.
    wrong = secrets.add("wrong SigV4 secret", made_up("WrongSigV4"))
    caller.answers.append(
        str(refused(as_key(daemon, "sagemaker", key, wrong).list_mlflow_tracking_servers))
    )
    caller.answers.append(str(refused(as_key(daemon, "iam", key, wrong).list_users)))
    wrong_gateway = secrets.add("wrong gateway SigV4 secret", made_up("WrongPlugin"))
    assert caller.gateway_signed(shared_server, key, wrong_gateway).status_code in (401, 403)
    ok = caller.gateway_signed(shared_server, key, secret)
    assert ok.status_code == 200, ok.text

    # Temporary credentials: the right token, a wrong one, an expired one.
    role = f"secrets-{uuid.uuid4().hex[:8]}"
    iam.create_role(
        RoleName=role,
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )
    sts = as_key(daemon, "sts", key, secret)
    session = sts.assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}", RoleSessionName="secrets"
    )
    temporary = session["Credentials"]
    temp_key = temporary["AccessKeyId"]
    temp_secret = secrets.add("temporary secret", temporary["SecretAccessKey"], key=temp_key)
    token = secrets.add("session token", temporary["SessionToken"])
    assert as_key(daemon, "sts", temp_key, temp_secret, token).get_caller_identity()
    wrong_token = secrets.add("wrong session token", made_up("WrongToken"))
    caller.answers.append(
        str(refused(as_key(daemon, "sts", temp_key, temp_secret, wrong_token).get_caller_identity))
    )
    # The daemon under test lets sessions last a second (conftest), to watch one expire.
    short = sts.assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}", RoleSessionName="short", DurationSeconds=1
    )["Credentials"]
    short_key = short["AccessKeyId"]
    secrets.add("short-lived secret", short["SecretAccessKey"], key=short_key)
    expired_token = secrets.add("expired session token", short["SessionToken"])
    time.sleep(1.5)
    expired = refused(
        as_key(
            daemon, "sts", short_key, short["SecretAccessKey"], expired_token
        ).get_caller_identity
    )
    assert expired["Error"]["Code"] == "ExpiredToken"
    caller.answers.append(str(expired))

    # HTTP Basic to the control plane, where only SigV4 is spoken: refused, never echoed.
    wrong_basic = secrets.add("wrong Basic secret", made_up("WrongBasic"), key=admin_key)
    for query in (False, True):
        for authorization in (basic(admin_key, wrong_basic), basic(key, secret)):
            assert caller.control_plane(authorization, query=query).status_code in (400, 403)
    # The same pair without the padding base64 adds, which once read as a "key=value" part.
    assert caller.control_plane(basic(key, secret).rstrip("="), query=False).status_code == 400

    # HTTP Basic to a tracking server's MLflow API: a wrong secret, then the right one.
    wrong_gateway_basic = secrets.add("wrong gateway Basic", made_up("WrongMlflow"), key=key)
    assert caller.gateway(
        shared_server, {"Authorization": basic(key, wrong_gateway_basic)}
    ).status_code in (401, 403)
    assert caller.gateway(shared_server, {"Authorization": basic(key, secret)}).status_code == 200

    # Presigned URLs: redeemed once, then reused, and one made up.
    url = as_key(daemon, "sagemaker", key, secret).create_presigned_mlflow_tracking_server_url(
        TrackingServerName="shared", ExpiresInSeconds=60
    )["AuthorizedUrl"]
    secrets.add("presigned token", url.split("authToken=", 1)[1])
    browser = requests.Session()
    assert caller.check(browser.get(url, timeout=30)).status_code == 200
    cookie = next(c for c in browser.cookies if c.name == "mlfleet_session").value
    secrets.add("MLflow UI session cookie", str(cookie))
    assert caller.check(requests.get(url, timeout=30, allow_redirects=False)).status_code == 403
    made_up_token = secrets.add("made-up presigned token", made_up("WrongLink"))
    invalid = url.split("authToken=", 1)[0] + "authToken=" + made_up_token
    assert caller.check(requests.get(invalid, timeout=30, allow_redirects=False)).status_code == 403
    assert (
        caller.gateway(shared_server, {}, cookies={"mlfleet_session": made_up_token}).status_code
        == 401
    )

    # The console: a wrong secret, a wrong session token, the right key, a one-time link twice.
    sign_in = f"{daemon.url}/console/sign-in"
    wrong_console = secrets.add("wrong console secret", made_up("WrongConsole"))
    for form in (
        {"access_key_id": key, "secret_access_key": wrong_console},
        {"access_key_id": temp_key, "secret_access_key": temp_secret, "session_token": wrong_token},
    ):
        http = requests.Session()
        csrf = ConsoleBrowser.csrf_of(http.get(sign_in, timeout=30).text)
        answer = caller.check(http.post(sign_in, data={"csrf": csrf, **form}, timeout=30))
        assert answer.status_code == 401
    console = ConsoleBrowser(daemon, key, secret)
    secrets.add("console session cookie", console.http.cookies["mlfleet_console"])
    link = subprocess.run(
        [sys.executable, "-m", "mlfleet", "console", "--data-dir", str(daemon.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    secrets.add("console link token", urlsplit(link).path.rsplit("/", 1)[1])
    assert caller.check(requests.get(link, timeout=30)).status_code == 200
    assert caller.check(requests.get(link, timeout=30)).status_code == 403

    # EventBridge connections: what they authenticate with is kept, never shown.
    events = as_key(daemon, "events", key, secret)
    api_key = secrets.add("connection API key", made_up("ApiKey"))
    password = secrets.add("connection password", made_up("Password"))
    header = secrets.add("connection secret header", made_up("Header"))
    keyed, basic_named = f"keyed-{uuid.uuid4().hex[:8]}", f"basic-{uuid.uuid4().hex[:8]}"
    answers = [
        events.create_connection(
            Name=keyed,
            AuthorizationType="API_KEY",
            AuthParameters={
                "ApiKeyAuthParameters": {"ApiKeyName": "x-api-key", "ApiKeyValue": api_key}
            },
        ),
        events.create_connection(
            Name=basic_named,
            AuthorizationType="BASIC",
            AuthParameters={
                "BasicAuthParameters": {"Username": "robot", "Password": password},
                "InvocationHttpParameters": {
                    "HeaderParameters": [{"Key": "X-Token", "Value": header, "IsValueSecret": True}]
                },
            },
        ),
        events.update_connection(
            Name=keyed,
            AuthParameters={
                "ApiKeyAuthParameters": {
                    "ApiKeyValue": secrets.add("updated API key", made_up("NewApiKey"))
                }
            },
        ),
        events.describe_connection(Name=keyed),
        events.describe_connection(Name=basic_named),
        events.list_connections(),
    ]
    caller.answers += [json.dumps(a, default=str) for a in answers]
    # A value the model refuses (over 512 characters): the validation message must not echo it.
    too_long = secrets.add("refused API key", made_up("TooLong") * 20)
    refusal = refused(
        events.create_connection,
        Name=f"long-{uuid.uuid4().hex[:8]}",
        AuthorizationType="API_KEY",
        AuthParameters={"ApiKeyAuthParameters": {"ApiKeyName": "k", "ApiKeyValue": too_long}},
    )
    assert refusal["Error"]["Code"] == "ValidationException"
    caller.answers.append(str(refusal))

    return Driven(secrets, caller.answers, user, key, role)


def test_no_answer_echoes_a_secret_it_was_not_asked_for(driven: Driven) -> None:
    # The answers that hand a secret out (CreateAccessKey, AssumeRole, presigned URLs, the
    # console's cookies) were not kept; every other answer is searched.
    driven.secrets.assert_none_in("the answers", driven.answers)


def test_the_daemons_logs_hold_no_secret(daemon: Daemon, driven: Driven) -> None:
    logs = [daemon.data_dir / "daemon.out", *daemon.data_dir.rglob("*.log")]
    assert daemon.data_dir / "mlfleet.log" in logs
    # The tracking server's MLflow workers log beside their server, and are searched too.
    assert any(path.parent != daemon.data_dir for path in logs), logs
    driven.secrets.assert_none_in(
        "the daemon's logs", (path.read_text(errors="replace") for path in logs)
    )


def trail_since(daemon: Daemon, start: datetime) -> list[dict[str, Any]]:
    cloudtrail = daemon.client("cloudtrail")
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"StartTime": start, "MaxResults": 50}
    while True:
        page = cloudtrail.lookup_events(**params)
        found += page["Events"]
        if "NextToken" not in page:
            return found
        params["NextToken"] = page["NextToken"]


def test_lookup_events_holds_no_secret(daemon: Daemon, driven: Driven) -> None:
    events = trail_since(daemon, driven.secrets.started)
    names = {event["EventName"] for event in events}
    # The calls that carried secrets are in the trail, hidden where they carried them.
    assert {"CreateAccessKey", "AssumeRole", "CreateConnection", "UpdateConnection"} <= names
    assert {"GetCallerIdentity", "ListMlflowTrackingServers"} <= names
    driven.secrets.assert_none_in("LookupEvents", [json.dumps(events, default=str)])


def test_the_exported_trail_holds_no_secret(daemon: Daemon, driven: Driven, tmp_path: Path) -> None:
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlfleet",
            "audit",
            "export",
            str(tmp_path),
            "--data-dir",
            str(daemon.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert exported.returncode == 0, exported.stderr
    files = [gzip.decompress(f.read_bytes()).decode() for f in tmp_path.rglob("*.json.gz")]
    assert any(driven.key in text for text in files)
    driven.secrets.assert_none_in("the exported trail", [*files, exported.stdout])


def test_the_console_shows_no_secret(daemon: Daemon, driven: Driven) -> None:
    console = ConsoleBrowser(daemon)
    events = trail_since(daemon, driven.secrets.started)
    paths = [
        "/servers",
        "/servers/shared",
        "/iam",
        "/iam/users",
        f"/iam/users/{driven.user}",
        "/iam/roles",
        f"/iam/roles/{driven.role}",
        "/audit",
        f"/audit?user={driven.user}",
        "/events",
        "/events/dead-letters",
        *(f"/audit/events/{event['EventId']}" for event in events),
    ]
    pages = []
    for path in paths:
        page = console.get(path)
        assert page.status_code == 200, (path, page.status_code)
        pages.append(page.text)
    export = console.get("/audit/export")
    assert export.status_code == 200
    pages.append(gzip.decompress(export.content).decode())
    driven.secrets.assert_none_in("the console's pages", pages)
