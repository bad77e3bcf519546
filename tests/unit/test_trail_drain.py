"""At shutdown the daemon drains the audit trail's writer: records queued to wait for a shared
commit (stored elsewhere already) are written before the process may exit (audit.trail)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from mlfleet.audit.trail import AuditTrail
from mlfleet.auth.identity import Principal
from mlfleet.gateway.data_events import data_event
from mlfleet.state.models import Base


def test_drain_writes_what_waits_for_a_shared_commit(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'control.db'}")
    Base.metadata.create_all(engine)
    trail = AuditTrail(
        sessionmaker(engine), b"k" * 32, tmp_path / "audit.head", "123456789012", "us-east-1"
    )
    told: list[Exception | None] = []
    principal = Principal("arn:aws:iam::123456789012:user/ana", "AIDAANA", "ana")
    for step in range(5):
        event = data_event(
            principal=principal,
            action="sagemaker-mlflow:LogMetric",
            resource="arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/t",
            started=0.0,
            source_ip="127.0.0.1",
            user_agent="test",
            method="POST",
            upstream_path="/api/2.0/mlflow/runs/log-metric",
            body=f'{{"step": {step}}}'.encode(),
            status=200,
            event_id=f"event-{step}",
        )
        trail.record_data_event_then(event, told.append, stored_elsewhere=True)
    trail.drain()
    assert told == [None] * 5
    verification = trail.verify()
    assert verification.ok, verification.problems
    assert verification.records == 5
