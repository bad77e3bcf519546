"""Attack item 2: a ``file:`` artifact store that names the daemon's data dir, /etc, or a
symbolic link to either. Stores live only under the operator's artifact roots, checked at
Create and Update (boto3, the console, ``mlfleet create``) and again whenever a server starts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from mlfleet.cli.common import service_client
from support.console import ConsoleBrowser
from support.daemon import Daemon
from support.waiting import wait_for

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/mlfleet"
OUTSIDE = "failed to satisfy constraint: Member must be a folder inside one of the artifact roots"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def fred(daemon: Daemon) -> Any:
    """A user who may create only ``fred-*`` servers: the attacker of the issue."""
    iam = daemon.client("iam")
    name = unique("fred")
    iam.create_user(UserName=name)
    iam.put_user_policy(
        UserName=name,
        PolicyName="own-servers",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "sagemaker:*",
                        "Resource": f"arn:aws:sagemaker:*:{ACCOUNT}:mlflow-tracking-server/fred-*",
                    },
                    {"Effect": "Allow", "Action": "iam:PassRole", "Resource": ROLE},
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return daemon.client(key=key["AccessKeyId"], secret=key["SecretAccessKey"])


def mlfleet(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlfleet", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def refusal(call: Callable[..., Any], **params: Any) -> str:
    with pytest.raises(ClientError) as exc:
        call(**params)
    error = exc.value.response["Error"]
    assert error["Code"] == "ValidationException", error
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return str(error["Message"])


def test_stores_outside_the_roots_are_refused_at_create(daemon: Daemon, tmp_path: Path) -> None:
    sm = fred(daemon)
    link = tmp_path / "innocent"
    link.symlink_to(daemon.data_dir)
    for uri in [
        f"file:{daemon.data_dir}",
        f"file://{daemon.data_dir}/servers",
        "file:/etc",
        "file:///tmp",  # holds the data dir
        f"file:{link}",  # inside the root, but it leads to the data dir
        f"file:{link}/artifacts",
        f"file:{tmp_path}/new/../../../../../etc",
    ]:
        message = refusal(
            sm.create_mlflow_tracking_server,
            TrackingServerName=unique("fred-y"),
            ArtifactStoreUri=uri,
            RoleArn=ROLE,
        )
        assert message.startswith(f"1 validation error detected: Value '{uri}' at ")
        assert OUTSIDE in message
    listed = daemon.client().list_mlflow_tracking_servers(MaxResults=100)
    assert not [s for s in listed["TrackingServerSummaries"] if "fred-y" in s["TrackingServerName"]]


def test_a_store_cannot_be_moved_outside_the_roots(daemon: Daemon, tmp_path: Path) -> None:
    sm = fred(daemon)
    name = unique("fred-ok")
    sm.create_mlflow_tracking_server(
        TrackingServerName=name, ArtifactStoreUri=f"file://{tmp_path}/art", RoleArn=ROLE
    )
    daemon.wait_status(name, "Created")
    message = refusal(
        sm.update_mlflow_tracking_server,
        TrackingServerName=name,
        ArtifactStoreUri=f"file:{daemon.data_dir}",
    )
    assert OUTSIDE in message
    desc = sm.describe_mlflow_tracking_server(TrackingServerName=name)
    assert desc["ArtifactStoreUri"] == f"file://{tmp_path}/art"
    assert desc["TrackingServerStatus"] == "Created"
    sm.delete_mlflow_tracking_server(TrackingServerName=name)


def test_a_store_cannot_hold_or_lie_in_another_servers(daemon: Daemon, tmp_path: Path) -> None:
    """Another tenant's artifacts are not reachable by naming their folder (or its parent)."""
    victim = unique("victim")
    daemon.client().create_mlflow_tracking_server(
        TrackingServerName=victim, ArtifactStoreUri=f"file://{tmp_path}/victim", RoleArn=ROLE
    )
    sm = fred(daemon)
    (tmp_path / "link").symlink_to(tmp_path / "victim")
    for uri in (
        f"file://{tmp_path}/victim",
        f"file://{tmp_path}",
        f"file://{tmp_path}/victim/inner",
        f"file://{tmp_path}/link",
    ):
        message = refusal(
            sm.create_mlflow_tracking_server,
            TrackingServerName=unique("fred-x"),
            ArtifactStoreUri=uri,
            RoleArn=ROLE,
        )
        assert "overlaps the artifact store of another tracking server" in message
        assert victim not in message
    name = unique("fred-own")
    sm.create_mlflow_tracking_server(
        TrackingServerName=name, ArtifactStoreUri=f"file://{tmp_path}/fred", RoleArn=ROLE
    )
    daemon.wait_status(name, "Created")
    message = refusal(
        sm.update_mlflow_tracking_server,
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{tmp_path}/victim",
    )
    assert "overlaps" in message
    sm.delete_mlflow_tracking_server(TrackingServerName=name)
    daemon.wait_status(victim, "Created")
    daemon.client().delete_mlflow_tracking_server(TrackingServerName=victim)


def test_console_and_cli_refuse_them_too(daemon: Daemon) -> None:
    answer = ConsoleBrowser(daemon).post(
        "/servers",
        {
            "TrackingServerName": unique("console"),
            "ArtifactStoreUri": "file:///etc",
            "RoleArn": ROLE,
            "TrackingServerSize": "Small",
        },
    )
    assert answer.status_code == 400
    field_error = re.search(r'id="e-ArtifactStoreUri" class="error">([^<]+)<', answer.text)
    assert field_error and "inside one of the artifact roots" in field_error[1], answer.text

    made = mlfleet(
        "create", unique("cli"), "--artifact-store-uri", "file:///etc", data_dir=daemon.data_dir
    )
    assert made.returncode == 1
    assert "ValidationException" in made.stderr and "artifact roots" in made.stderr


@pytest.mark.parametrize("root", ["parent", "itself", "servers"])
def test_a_root_that_exposes_the_data_dir_stops_the_daemon(tmp_path: Path, root: str) -> None:
    data_dir = tmp_path / "data"
    unsafe = {"parent": tmp_path, "itself": data_dir, "servers": data_dir / "servers"}[root]
    started = mlfleet("up", "--artifact-root", str(unsafe), "--port", "1", data_dir=data_dir)
    assert started.returncode == 2, started.stderr
    assert f"artifact root {unsafe}" in started.stderr
    assert "data dir" in started.stderr
    assert "Traceback" not in started.stderr


def test_servers_outside_new_roots_are_reported_and_not_started(tmp_path: Path) -> None:
    old_root, new_root = tmp_path / "old-root", tmp_path / "new-root"
    first = Daemon(tmp_path / "data", artifact_root=old_root).start()
    try:
        sm = first.client()
        sm.create_mlflow_tracking_server(
            TrackingServerName="moved", ArtifactStoreUri=f"file://{old_root}/a", RoleArn=ROLE
        )
        first.wait_status("moved", "Created")
    finally:
        first.stop()

    again = Daemon(tmp_path / "data", artifact_root=new_root).start()
    try:
        sm = again.client()
        log = again.data_dir / "mlfleet.log"
        wait_for(
            lambda: re.search(r"WARNING .*tracking server moved: artifact store", log.read_text()),
            30,
            what="the warning about the server's store",
        )
        # FailureReason is an extension boto3 drops; mlfleet's own client keeps it.
        keeps_extras = service_client(again.data_dir, again.url)
        desc = wait_for(
            lambda: (
                (d := keeps_extras.describe_mlflow_tracking_server(TrackingServerName="moved")).get(
                    "FailureReason"
                )
                and d
            ),
            60,
            what="the server's refusal to start",
        )
        assert desc["TrackingServerStatus"] == "Created" and desc["IsActive"] == "Inactive"
        assert "outside the artifact roots" in desc["FailureReason"]
        assert str(new_root) in desc["FailureReason"]

        sm.update_mlflow_tracking_server(
            TrackingServerName="moved", ArtifactStoreUri=f"file://{new_root}/a"
        )
        desc = again.wait_status("moved", "Updated", "UpdateFailed")
        assert desc["TrackingServerStatus"] == "Updated" and desc["IsActive"] == "Active"
    finally:
        again.stop()
