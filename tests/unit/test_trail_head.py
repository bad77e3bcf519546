"""An append whose commit happened while its answer was lost (the database's connection dropped
as it went) leaves the audit trail able to go on: the next append reads where the chain ends
from the database (audit.trail)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.orm import sessionmaker

from mlfleet.api.pipeline import ApiCall
from mlfleet.audit.trail import AuditTrail
from mlfleet.state.models import Base


def test_the_chain_goes_on_after_a_commit_whose_answer_was_lost(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'control.db'}")
    Base.metadata.create_all(engine)
    trail = AuditTrail(
        sessionmaker(engine), b"k" * 32, tmp_path / "audit.head", "123456789012", "us-east-1"
    )

    def call() -> ApiCall:
        return ApiCall.begin("sagemaker", source_ip="127.0.0.1", user_agent="test")

    trail.record_api_call(call())
    lose_the_answer = [True]

    @event.listens_for(engine, "commit")
    def committed_then_lost(connection: Any) -> None:
        if lose_the_answer.pop() if lose_the_answer else False:
            connection.connection.dbapi_connection.commit()
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    with pytest.raises(psycopg.OperationalError):
        trail.record_api_call(call())
    trail.record_api_call(call())

    verification = trail.verify()
    assert verification.ok, verification.problems
    assert verification.records == 3
