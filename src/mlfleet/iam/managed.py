"""The AWS managed policies mlfleet ships: read-only, attachable, one JSON file each.

They live in ``managed_policies/`` as data, not in the database, so an upgrade of mlfleet
updates them everywhere at once (as AWS updates its own managed policies).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mlfleet.policy.evaluation import Policy, parse_policy

POLICY_DIR = Path(__file__).with_name("managed_policies")
ARN_PREFIX = "arn:aws:iam::aws:policy/"
ADMINISTRATOR_ACCESS = ARN_PREFIX + "AdministratorAccess"


@dataclass(frozen=True)
class ManagedPolicy:
    name: str
    arn: str
    policy_id: str
    description: str
    document: str
    policy: Policy


@cache
def aws_managed_policies() -> dict[str, ManagedPolicy]:
    """Every shipped policy by ARN; a malformed file stops the daemon at start-up."""
    policies = {}
    for path in sorted(POLICY_DIR.glob("*.json")):
        spec = json.loads(path.read_text())
        document = json.dumps(spec["Document"], indent=2)
        arn = ARN_PREFIX + path.stem
        policies[arn] = ManagedPolicy(
            name=path.stem,
            arn=arn,
            policy_id=spec["PolicyId"],
            description=spec["Description"],
            document=document,
            policy=parse_policy(document),
        )
    return policies
