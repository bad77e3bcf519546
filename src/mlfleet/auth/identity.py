"""Who is calling: the principal every authenticated request resolves to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Principal:
    """An IAM user, or a session of an assumed role.

    For a session, ``arn`` is the assumed-role ARN (arn:aws:sts::<account>:assumed-role/<role>/
    <session>), ``name`` the role's name and ``user_id`` "<role id>:<session>", as AWS reports
    them; ``identity_arn`` is the role's own ARN, which policies see as aws:PrincipalArn.
    """

    arn: str
    user_id: str
    name: str
    access_key_id: str | None = None
    kind: str = "user"  # "user", "role", or "service" (a tracking server acting itself)
    identity_arn: str = ""

    @property
    def principal_arn(self) -> str:
        return self.identity_arn or self.arn

    @property
    def is_user(self) -> bool:
        return self.kind == "user"

    def user_context(self) -> dict[str, Any]:
        """SageMaker's ``UserContext`` shape for CreatedBy / LastModifiedBy."""
        return {
            "UserProfileName": self.name,
            "IamIdentity": {"Arn": self.arn, "PrincipalId": self.user_id},
        }


def principal_from_arn(arn: str, user_id: str) -> Principal:
    """Rebuild a principal recorded by ARN (a UI session opened through a presigned URL)."""
    resource = arn.split(":", 5)[-1]
    if resource.startswith("assumed-role/"):
        _, role, _session = resource.split("/", 2)
        account = arn.split(":")[4]
        return Principal(
            arn,
            user_id,
            role,
            kind="role",
            identity_arn=f"arn:aws:iam::{account}:role/{role}",
        )
    return Principal(arn, user_id, resource.rsplit("/", 1)[-1])
