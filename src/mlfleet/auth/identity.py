"""Who is calling: the principal every authenticated request resolves to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Principal:
    arn: str
    user_id: str
    name: str
    access_key_id: str | None = None

    def user_context(self) -> dict[str, Any]:
        """SageMaker's ``UserContext`` shape for CreatedBy / LastModifiedBy."""
        return {
            "UserProfileName": self.name,
            "IamIdentity": {"Arn": self.arn, "PrincipalId": self.user_id},
        }
