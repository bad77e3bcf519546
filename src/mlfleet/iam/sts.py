"""STS: who am I, and temporary credentials for a role (AssumeRole)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth.credentials import token_hash
from mlfleet.auth.identity import Principal
from mlfleet.auth.secrets import SecretBox
from mlfleet.common.time import when
from mlfleet.iam.store import IamStore, new_access_key_id, new_secret
from mlfleet.policy.authorizer import Authorizer, RequestFacts, denial_message, principal_keys
from mlfleet.policy.evaluation import Decision, EvaluationResult, RequestContext
from mlfleet.policy.trust import Trust, parse_trust
from mlfleet.protocol.errors import AwsError, NamedAwsError, ValidationError
from mlfleet.protocol.shapes import sts as shapes
from mlfleet.state.models import AccessKey

ASSUME_ROLE = "sts:AssumeRole"
DEFAULT_DURATION = 3600


class AccessDenied(NamedAwsError):
    """STS's refusal of an AssumeRole: the caller may not, or the role does not trust it."""

    http_status = 403


class SecurityTokenService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: IamStore,
        authorizer: Authorizer,
        box: SecretBox,
        account_id: str,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._authorizer = authorizer
        self._box = box
        self._account = account_id

    def get_caller_identity(self, principal: Principal) -> shapes.GetCallerIdentityResponse:
        return {"UserId": principal.user_id, "Account": self._account, "Arn": principal.arn}

    def assume_role(
        self, req: shapes.AssumeRoleRequest, principal: Principal, facts: RequestFacts
    ) -> shapes.AssumeRoleResponse:
        role_arn, session_name = req["RoleArn"], req["RoleSessionName"]
        denied = AccessDenied(
            denial_message(
                principal, ASSUME_ROLE, role_arn, EvaluationResult(Decision.IMPLICIT_DENY)
            )
        )
        role = self._role_for(role_arn)
        if role is None:
            raise denied
        duration = req.get("DurationSeconds", DEFAULT_DURATION)
        if duration > role.max_session_duration:
            raise ValidationError(
                f"The requested DurationSeconds exceeds the MaxSessionDuration set for this "
                f"role ({role.max_session_duration}).",
            )
        identity = self._authorizer.check(principal, ASSUME_ROLE, role_arn, facts)
        if identity.decision is Decision.EXPLICIT_DENY:
            raise AccessDenied(denial_message(principal, ASSUME_ROLE, role_arn, identity))
        ctx = RequestContext(
            ASSUME_ROLE,
            role_arn,
            principal_keys(principal, self._account, ()) | {"sts:RoleSessionName": session_name},
        )
        trust = parse_trust(role.trust_policy).trusts(
            ctx, (principal.arn, principal.principal_arn), self._account
        )
        if trust is Trust.NONE or (trust is Trust.ACCOUNT and not identity.allowed):
            raise denied
        return self._issue(role, session_name, duration)

    def _role_for(self, role_arn: str) -> Any:
        prefix = f"arn:aws:iam::{self._account}:role/"
        if not role_arn.startswith(prefix):
            return None
        name = role_arn.rsplit("/", 1)[-1]
        try:
            role = self._store.role_record(name)
        except AwsError:
            return None
        return role if role.arn == role_arn else None

    def _issue(self, role: Any, session_name: str, duration: int) -> shapes.AssumeRoleResponse:
        key_id, secret = new_access_key_id("ASIA"), new_secret()
        token = "FwoG" + secrets.token_urlsafe(96)
        now = time.time()
        expires_at = now + duration
        assumed_arn = f"arn:aws:sts::{self._account}:assumed-role/{role.name}/{session_name}"
        with self._sessions.begin() as session:
            # Expired sessions are of no use to anyone: sweep them while writing a new one.
            session.execute(
                delete(AccessKey).where(AccessKey.owner_kind == "role", AccessKey.expires_at < now)
            )
            session.add(
                AccessKey(
                    access_key_id=key_id,
                    secret_access_key=self._box.seal(secret),
                    owner_kind="role",
                    user_name=role.name,
                    user_arn=assumed_arn,
                    user_id=f"{role.role_id}:{session_name}",
                    status="Active",
                    created_at=now,
                    session_token_hash=token_hash(token),
                    expires_at=expires_at,
                )
            )
        return {
            "Credentials": {
                "AccessKeyId": key_id,
                "SecretAccessKey": secret,
                "SessionToken": token,
                "Expiration": when(expires_at),
            },
            "AssumedRoleUser": {
                "AssumedRoleId": f"{role.role_id}:{session_name}",
                "Arn": assumed_arn,
            },
            "PackedPolicySize": 0,
        }
