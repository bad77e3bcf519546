"""What tests of the AWS-shaped API share: the account, unique names, a ``ClientError``'s code
and message, and the AWS CLI run against a daemon."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from support.daemon import Daemon

ACCOUNT = "123456789012"
AWS = [sys.executable, "-m", "awscli"]


def moto_s3(s3_env: dict[str, str]) -> Any:
    """A boto3 S3 client of the moto server the tests' daemons use (the ``s3_env`` fixture)."""
    return boto3.client(
        "s3",
        endpoint_url=s3_env["MLFLEET_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = exc.value.response["Error"]
    return err["Code"], err["Message"]


def aws(
    daemon: Daemon, *args: str, check: bool = True, service: str = "sagemaker"
) -> subprocess.CompletedProcess[str]:
    """`aws <service> ...` using only the files mlfleet wrote (no --endpoint-url needed)."""
    return subprocess.run(
        [*AWS, service, *args, "--output", "json"],
        env=daemon.cli_env(),
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )
