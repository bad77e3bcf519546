"""The S3-compatible endpoint: a tracking server's artifact store as a bucket, through boto3 and
the AWS CLI on the daemon's one endpoint URL, the same artifacts the MLflow client sees."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from mlflow import MlflowClient

from support.aws import unique
from support.chaos import trail_records
from support.daemon import Daemon
from support.iam import as_key, new_user, policy
from support.waiting import wait_for

ROLE = "arn:aws:iam::123456789012:role/mlfleet"


@pytest.fixture
def mlflow_client(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> MlflowClient:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    return MlflowClient(tracking_uri=shared_server["TrackingServerUrl"])


def run_prefix(client: MlflowClient) -> tuple[str, str]:
    """A new run's id and its artifacts' key prefix in the server's bucket."""
    run = client.create_run("0")
    uri = run.info.artifact_uri
    assert uri.startswith("mlflow-artifacts:/"), uri
    return run.info.run_id, uri.removeprefix("mlflow-artifacts:/").strip("/") + "/"


def code_of(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def test_objects_written_by_either_client_are_seen_by_the_other(
    daemon: Daemon, mlflow_client: MlflowClient, tmp_path: Path
) -> None:
    s3 = daemon.client("s3")
    run_id, prefix = run_prefix(mlflow_client)
    local = tmp_path / "notes.txt"
    local.write_text("logged by MLflow\n")
    mlflow_client.log_artifact(run_id, str(local), "docs")

    listed = s3.list_objects_v2(Bucket="shared", Prefix=prefix, Delimiter="/")
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == [f"{prefix}docs/"]
    listed = s3.list_objects_v2(Bucket="shared", Prefix=prefix)
    [item] = listed["Contents"]
    assert (item["Key"], item["Size"]) == (f"{prefix}docs/notes.txt", local.stat().st_size)
    got = s3.get_object(Bucket="shared", Key=f"{prefix}docs/notes.txt")
    assert got["Body"].read() == b"logged by MLflow\n"
    assert s3.head_object(Bucket="shared", Key=f"{prefix}docs/notes.txt")["ContentLength"] == 17

    put = s3.put_object(Bucket="shared", Key=f"{prefix}docs/from s3.txt", Body=b"sent by boto3")
    assert put["ETag"] == f'"{hashlib.md5(b"sent by boto3").hexdigest()}"'
    names = sorted(f.path for f in mlflow_client.list_artifacts(run_id, "docs"))
    assert names == ["docs/from s3.txt", "docs/notes.txt"]
    fetched = mlflow_client.download_artifacts(run_id, "docs/from s3.txt", str(tmp_path))
    assert Path(fetched).read_bytes() == b"sent by boto3"

    s3.delete_object(Bucket="shared", Key=f"{prefix}docs/from s3.txt")
    assert [f.path for f in mlflow_client.list_artifacts(run_id, "docs")] == ["docs/notes.txt"]
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket="shared", Key=f"{prefix}docs/from s3.txt")
    assert code_of(missing) == "NoSuchKey"
    with pytest.raises(ClientError) as no_bucket:
        s3.list_objects_v2(Bucket="no-such-server")
    assert code_of(no_bucket) == "NoSuchBucket"


def test_large_objects_go_in_parts_and_come_back_in_ranges(
    daemon: Daemon, mlflow_client: MlflowClient, tmp_path: Path
) -> None:
    s3 = daemon.client("s3")
    run_id, prefix = run_prefix(mlflow_client)
    blob = tmp_path / "weights.bin"
    blob.write_bytes(os.urandom(13 * 1024 * 1024))
    parts = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    s3.upload_file(str(blob), "shared", f"{prefix}model/weights.bin", Config=parts)
    back = tmp_path / "back.bin"
    s3.download_file("shared", f"{prefix}model/weights.bin", str(back), Config=parts)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(blob.read_bytes()).digest()
    via_mlflow = mlflow_client.download_artifacts(run_id, "model/weights.bin", str(tmp_path / "m"))
    assert Path(via_mlflow).read_bytes() == blob.read_bytes()
    tail = s3.get_object(Bucket="shared", Key=f"{prefix}model/weights.bin", Range="bytes=-10")
    assert tail["Body"].read() == blob.read_bytes()[-10:]
    assert tail["ContentRange"] == f"bytes {13 * 1024 * 1024 - 10}-{13 * 1024 * 1024 - 1}/" + str(
        13 * 1024 * 1024
    )


def test_listing_pages_in_key_order(daemon: Daemon, mlflow_client: MlflowClient) -> None:
    s3 = daemon.client("s3")
    _, prefix = run_prefix(mlflow_client)
    keys = [f"{prefix}{name}" for name in ("a.txt", "b/c.txt", "b/d.txt", "e.txt", "f/g/h.txt")]
    for key in keys:
        s3.put_object(Bucket="shared", Key=key, Body=key.encode())
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket="shared", Prefix=prefix, PaginationConfig={"PageSize": 2}
    )
    seen = [[item["Key"] for item in page.get("Contents", [])] for page in pages]
    assert [len(page) for page in seen] == [2, 2, 1]
    assert [key for page in seen for key in page] == sorted(keys)
    v1 = s3.list_objects(Bucket="shared", Prefix=prefix, Delimiter="/")
    assert [c["Key"] for c in v1["Contents"]] == [f"{prefix}a.txt", f"{prefix}e.txt"]
    assert [p["Prefix"] for p in v1["CommonPrefixes"]] == [f"{prefix}b/", f"{prefix}f/"]
    deleted = s3.delete_objects(
        Bucket="shared", Delete={"Objects": [{"Key": key} for key in keys[:2]]}
    )
    assert sorted(d["Key"] for d in deleted["Deleted"]) == sorted(keys[:2])
    left = s3.list_objects_v2(Bucket="shared", Prefix=prefix)["Contents"]
    assert [item["Key"] for item in left] == sorted(keys[2:])


def test_unsafe_keys_and_bad_bodies_are_refused(
    daemon: Daemon, mlflow_client: MlflowClient
) -> None:
    s3 = daemon.client("s3")
    _, prefix = run_prefix(mlflow_client)
    for key in (f"{prefix}../../escape.txt", f"{prefix}a//b.txt", f"{prefix}dir/"):
        with pytest.raises(ClientError) as refused:
            s3.put_object(Bucket="shared", Key=key, Body=b"x")
        assert code_of(refused) == "InvalidArgument", key
    with pytest.raises(ClientError) as bad_digest:
        s3.put_object(
            Bucket="shared", Key=f"{prefix}x.txt", Body=b"x", ContentMD5="AAAAAAAAAAAAAAAAAAAAAA=="
        )
    assert code_of(bad_digest) == "BadDigest"
    assert "Contents" not in s3.list_objects_v2(Bucket="shared", Prefix=prefix)
    # Multipart upload ids name folders of the daemon's data dir: none reaches outside them,
    # and an upload begun for one key takes no part for another.
    for upload_id in ("..", "../../master.key", "a/b"):
        with pytest.raises(ClientError) as outside:
            s3.upload_part(
                Bucket="shared", Key=f"{prefix}p.bin", UploadId=upload_id, PartNumber=1, Body=b"x"
            )
        assert code_of(outside) == "NoSuchUpload", upload_id
    begun = s3.create_multipart_upload(Bucket="shared", Key=f"{prefix}p.bin")["UploadId"]
    with pytest.raises(ClientError) as elsewhere:
        s3.upload_part(
            Bucket="shared", Key=f"{prefix}q.bin", UploadId=begun, PartNumber=1, Body=b"x"
        )
    assert code_of(elsewhere) == "NoSuchUpload"
    s3.abort_multipart_upload(Bucket="shared", Key=f"{prefix}p.bin", UploadId=begun)


def test_iam_decides_each_s3_action_and_keeps_tenants_apart(
    daemon: Daemon, mlflow_client: MlflowClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, prefix = run_prefix(mlflow_client)
    other = unique("other")
    daemon.client().create_mlflow_tracking_server(
        TrackingServerName=other,
        ArtifactStoreUri=f"file://{tmp_path_factory.mktemp(other)}",
        RoleArn=ROLE,
    )
    reader = new_user(
        daemon,
        inline=policy(
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": ["arn:aws:s3:::shared", "arn:aws:s3:::shared/*"],
            }
        ),
    )
    s3 = as_key(daemon, "s3", reader)
    admin = daemon.client("s3")
    admin.put_object(Bucket="shared", Key=f"{prefix}r.txt", Body=b"readable")
    assert s3.get_object(Bucket="shared", Key=f"{prefix}r.txt")["Body"].read() == b"readable"
    with pytest.raises(ClientError) as denied:
        s3.put_object(Bucket="shared", Key=f"{prefix}w.txt", Body=b"no")
    assert code_of(denied) == "AccessDenied"
    message = denied.value.response["Error"]["Message"]
    assert (
        f"is not authorized to perform: s3:PutObject on resource: arn:aws:s3:::shared/{prefix}w.txt"
        in message
    )
    daemon.wait_status(other, "Created")
    admin.put_object(Bucket=other, Key="secret.txt", Body=b"other tenant")
    for call in (
        lambda: s3.get_object(Bucket=other, Key="secret.txt"),
        lambda: s3.list_objects_v2(Bucket=other),
        lambda: s3.delete_object(Bucket=other, Key="secret.txt"),
    ):
        with pytest.raises(ClientError) as crossed:
            call()
        assert code_of(crossed) == "AccessDenied"
    assert admin.get_object(Bucket=other, Key="secret.txt")["Body"].read() == b"other tenant"
    daemon.client().delete_mlflow_tracking_server(TrackingServerName=other)


def test_signatures_are_verified_and_presigned_urls_expire(
    daemon: Daemon, mlflow_client: MlflowClient
) -> None:
    forged = daemon.client("s3", secret="not-the-secret")
    with pytest.raises(ClientError) as bad:
        forged.list_objects_v2(Bucket="shared")
    assert code_of(bad) == "SignatureDoesNotMatch"

    _, prefix = run_prefix(mlflow_client)
    s3 = daemon.client("s3", config=Config(signature_version="s3v4"))
    upload = s3.generate_presigned_url(
        "put_object", Params={"Bucket": "shared", "Key": f"{prefix}p.txt"}, ExpiresIn=300
    )
    assert requests.put(upload, data=b"presigned", timeout=30).status_code == 200
    download = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "shared", "Key": f"{prefix}p.txt"}, ExpiresIn=300
    )
    assert requests.get(download, timeout=30).content == b"presigned"
    tampered = download.replace("p.txt", "q.txt")
    assert requests.get(tampered, timeout=30).status_code == 403
    expired = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "shared", "Key": f"{prefix}p.txt"}, ExpiresIn=1
    )
    wait_for(lambda: requests.get(expired, timeout=30).status_code == 403, 10, what="expiry")
    assert "Request has expired" in requests.get(expired, timeout=30).text


def test_writes_are_data_events(daemon: Daemon, mlflow_client: MlflowClient) -> None:
    s3 = daemon.client("s3")
    _, prefix = run_prefix(mlflow_client)
    s3.put_object(Bucket="shared", Key=f"{prefix}audited.txt", Body=b"a")
    s3.delete_object(Bucket="shared", Key=f"{prefix}audited.txt")
    arn = f"arn:aws:s3:::shared/{prefix}audited.txt"
    for name in ("PutObject", "DeleteObject"):
        [record] = [r for r in trail_records(daemon, name) if r["resources"][0]["ARN"] == arn]
        assert record["eventSource"] == "s3.amazonaws.com"
        assert record["resources"][0]["type"] == "AWS::S3::Object"
        assert record["requestParameters"]["key"] == f"{prefix}audited.txt"


def test_the_aws_cli_copies_and_lists_with_the_daemons_config(
    daemon: Daemon, mlflow_client: MlflowClient, tmp_path: Path
) -> None:
    _, prefix = run_prefix(mlflow_client)
    local = tmp_path / "cli.txt"
    local.write_text("through aws s3 cp\n")
    aws = [str(Path(sys.executable).parent / "aws"), "s3"]

    def cli(*args: str) -> str:
        done = subprocess.run(
            [*aws, *args], env=daemon.cli_env(), capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    cli("cp", str(local), f"s3://shared/{prefix}cli.txt")
    assert "cli.txt" in cli("ls", f"s3://shared/{prefix}")
    cli("cp", f"s3://shared/{prefix}cli.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_text() == "through aws s3 cp\n"
