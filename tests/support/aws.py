"""What tests of the AWS-shaped API share: the account, unique names, a ``ClientError``'s code
and message, and the AWS CLI run against a daemon."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from botocore.exceptions import ClientError

from support.daemon import Daemon

ACCOUNT = "123456789012"
AWS = [sys.executable, "-m", "awscli"]


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
