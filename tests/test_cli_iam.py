"""`mlfleet iam ...` run as a person would run it, checked through boto3 against the daemon."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from support.daemon import Daemon

READ_ONLY = "arn:aws:iam::aws:policy/MlfleetReadOnlyAccess"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def iam_cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlfleet", "iam", *args, "--data-dir", str(daemon.data_dir)],
        env=daemon.cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(daemon: Daemon, *args: str) -> str:
    out = iam_cli(daemon, *args)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return out.stdout


def decisions(table: str) -> dict[str, str]:
    """action -> decision from `mlfleet iam simulate`'s table."""
    rows = re.findall(r"(sagemaker[\w-]*:\w+)\s*│\s*(\w+)", table)
    return dict(rows)


def test_create_user_with_group_policy_and_key(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    user, group = unique("cli-user"), unique("cli-group")
    ok(daemon, "create-group", group)
    out = ok(
        daemon,
        "create-user",
        user,
        "--group",
        group,
        "--policy",
        "MlfleetReadOnlyAccess",  # a short name, resolved to the shipped policy's ARN
        "--with-key",
    )
    got = iam.get_user(UserName=user)["User"]
    assert got["Arn"] in out
    members = iam.get_group(GroupName=group)["Users"]
    assert [u["UserName"] for u in members] == [user]
    attached = iam.list_attached_user_policies(UserName=user)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [READ_ONLY]

    # The key is printed once, with lines to copy; both forms carry the same working key.
    key_id = re.search(r"access key id:\s+(AKIA\w{16})", out)
    secret = re.search(r"secret access key:\s+(\S+)", out)
    assert key_id and secret
    key_id_s, secret_s = key_id.group(1), secret.group(1)
    assert f"export MLFLOW_TRACKING_USERNAME={key_id_s} MLFLOW_TRACKING_PASSWORD={secret_s}" in out
    assert f"export AWS_ACCESS_KEY_ID={key_id_s} AWS_SECRET_ACCESS_KEY={secret_s}" in out
    listed = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in listed] == [key_id_s]
    sts = boto3.client(
        "sts",
        endpoint_url=daemon.url,
        region_name="us-east-1",
        aws_access_key_id=key_id_s,
        aws_secret_access_key=secret_s,
    )
    assert sts.get_caller_identity()["Arn"] == got["Arn"]

    # Listings show the user with its group and policy, and never a secret.
    users = ok(daemon, "users")
    assert user in users and secret_s not in users
    keys = ok(daemon, "keys", user)
    assert key_id_s in keys and "Active" in keys and secret_s not in keys
    assert group in ok(daemon, "groups")


def test_simulate_read_only_user(daemon: Daemon) -> None:
    user = unique("cli-reader")
    ok(daemon, "create-user", user, "--policy", READ_ONLY)
    table = ok(daemon, "simulate", user, "sagemaker-mlflow:GetRun", "sagemaker-mlflow:LogMetric")
    assert decisions(table) == {
        "sagemaker-mlflow:GetRun": "allowed",
        "sagemaker-mlflow:LogMetric": "implicitDeny",
    }
    assert "MlfleetReadOnlyAccess" in table  # the policy that allowed GetRun

    # By ARN too, and the same decisions the daemon's own simulator gives through boto3.
    arn = daemon.client("iam").get_user(UserName=user)["User"]["Arn"]
    by_arn = ok(daemon, "simulate", arn, "sagemaker-mlflow:LogMetric")
    assert decisions(by_arn) == {"sagemaker-mlflow:LogMetric": "implicitDeny"}


def test_keys_disable_enable_delete(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    user = unique("cli-keys")
    ok(daemon, "create-user", user)
    out = ok(daemon, "create-key", user)
    key_id = re.search(r"access key id:\s+(AKIA\w{16})", out)
    assert key_id
    kid = key_id.group(1)

    ok(daemon, "disable-key", user, kid)
    assert iam.list_access_keys(UserName=user)["AccessKeyMetadata"][0]["Status"] == "Inactive"
    ok(daemon, "enable-key", user, kid)
    assert iam.list_access_keys(UserName=user)["AccessKeyMetadata"][0]["Status"] == "Active"
    ok(daemon, "delete-key", user, kid)
    assert iam.list_access_keys(UserName=user)["AccessKeyMetadata"] == []


def test_groups_and_attach_detach(daemon: Daemon, tmp_path: Path) -> None:
    iam = daemon.client("iam")
    user, group, policy = unique("cli-member"), unique("cli-team"), unique("cli-log-only")
    ok(daemon, "create-user", user)
    ok(daemon, "create-group", group)
    ok(daemon, "add-to-group", group, user)
    assert [g["GroupName"] for g in iam.list_groups_for_user(UserName=user)["Groups"]] == [group]

    document = tmp_path / "log-only.json"
    document.write_text(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
        '"Action": "sagemaker-mlflow:Log*", "Resource": "*"}]}'
    )
    created = ok(daemon, "create-policy", policy, str(document))
    arn = f"arn:aws:iam::123456789012:policy/{policy}"
    assert arn in created
    assert policy in ok(daemon, "policies", "--scope", "local")
    assert policy not in ok(daemon, "policies", "--scope", "aws")

    ok(daemon, "attach", policy, "--group", group)  # by short name
    attached = iam.list_attached_group_policies(GroupName=group)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [arn]
    # The member now may log, through the group.
    simulated = ok(daemon, "simulate", user, "sagemaker-mlflow:LogMetric")
    assert decisions(simulated) == {"sagemaker-mlflow:LogMetric": "allowed"}

    ok(daemon, "detach", arn, "--group", group)  # by ARN
    assert iam.list_attached_group_policies(GroupName=group)["AttachedPolicies"] == []
    ok(daemon, "remove-from-group", group, user)
    assert iam.list_groups_for_user(UserName=user)["Groups"] == []

    neither = iam_cli(daemon, "attach", policy)
    assert neither.returncode != 0 and "exactly one of --user, --group or --role" in neither.stderr
    unknown = iam_cli(daemon, "attach", unique("no-such-policy"), "--user", user)
    assert unknown.returncode != 0 and "no policy named" in unknown.stderr


def test_delete_user_force_removes_everything(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    user, group = unique("cli-leaver"), unique("cli-leavers")
    ok(daemon, "create-group", group)
    made = ok(daemon, "create-user", user, "--group", group, "--policy", READ_ONLY, "--with-key")
    key_id = re.search(r"AWS_ACCESS_KEY_ID=(\S+) AWS_SECRET_ACCESS_KEY=(\S+)", made)
    assert key_id
    sts = boto3.client(
        "sts",
        endpoint_url=daemon.url,
        region_name="us-east-1",
        aws_access_key_id=key_id.group(1),
        aws_secret_access_key=key_id.group(2),
    )
    assert sts.get_caller_identity()["Arn"].endswith(f"user/{user}")
    iam.put_user_policy(
        UserName=user,
        PolicyName="inline",
        PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
        '"Action": "sagemaker-mlflow:Get*", "Resource": "*"}]}',
    )

    # Without --force IAM refuses, readably, and says what would work.
    refused = iam_cli(daemon, "delete-user", user)
    assert refused.returncode != 0
    assert "DeleteConflict" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    iam.get_user(UserName=user)  # still there

    ok(daemon, "delete-user", user, "--force")
    with pytest.raises(ClientError) as exc:
        iam.get_user(UserName=user)
    assert exc.value.response["Error"]["Code"] == "NoSuchEntity"
    assert iam.get_group(GroupName=group)["Users"] == []
    with pytest.raises(ClientError) as exc:
        sts.get_caller_identity()  # its key went with it
    assert exc.value.response["Error"]["Code"] == "InvalidClientTokenId"
    assert user not in ok(daemon, "users")


def test_unknown_user_is_a_readable_error(daemon: Daemon) -> None:
    ghost = unique("cli-ghost")
    for args in (
        ("delete-user", ghost),
        ("delete-user", ghost, "--force"),
        ("keys", ghost),
        ("create-key", ghost),
        ("simulate", ghost, "sagemaker-mlflow:GetRun"),
    ):
        out = iam_cli(daemon, *args)
        assert out.returncode == 1, args
        assert f"NoSuchEntity: The user with name {ghost} cannot be found." in out.stderr, args
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr  # one line


def test_whoami_and_never_locking_yourself_out(daemon: Daemon) -> None:
    assert "arn:aws:iam::123456789012:user/admin" in ok(daemon, "whoami")
    own_key, _ = daemon.credentials
    for args in (("delete-key", "admin", own_key), ("disable-key", "admin", own_key)):
        out = iam_cli(daemon, *args)
        assert out.returncode == 1 and "signs with" in out.stderr
    refused = iam_cli(daemon, "delete-user", "admin", "--force")
    assert refused.returncode == 1 and "lock you out" in refused.stderr
    keys = daemon.client("iam").list_access_keys(UserName="admin")["AccessKeyMetadata"]
    assert (own_key, "Active") in [(k["AccessKeyId"], k["Status"]) for k in keys]


def test_a_typo_in_create_user_creates_nothing(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    for extra in (("--group", unique("no-such-group")), ("--policy", unique("no-such-policy"))):
        user = unique("cli-typo")
        out = iam_cli(daemon, "create-user", user, *extra)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        with pytest.raises(ClientError) as exc:
            iam.get_user(UserName=user)
        assert exc.value.response["Error"]["Code"] == "NoSuchEntity"
