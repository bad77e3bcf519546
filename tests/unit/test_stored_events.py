"""Data events stored with MLflow's own commit (runtime.stored_events), on a real SQLite file
with ORM sessions as MLflow's store uses them: add objects, then commit."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Integer, String, create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mlfleet.runtime.stored_events import DELETE_BATCH, PENDING, StoredEvents


class Base(DeclarativeBase):
    pass


class Metric(Base):
    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), default="loss")


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'mlflow.db'}")
    Base.metadata.create_all(engine)
    return engine


@pytest.fixture
def stored(engine: Engine) -> StoredEvents:
    events = StoredEvents()
    events.install(engine)
    return events


def log_metric(engine: Engine, keep: bool = True) -> None:
    with Session(engine) as session:
        session.add(Metric())
        session.flush()
        if keep:
            session.commit()
        else:
            session.rollback()


def stored_ids(stored: StoredEvents) -> list[str]:
    return [event_id for event_id, _ in stored.left_over()]


def test_a_record_is_stored_by_the_commit_of_the_write_it_describes(
    engine: Engine, stored: StoredEvents
) -> None:
    stored.offer("e-1", '{"action": "LogMetric"}')
    log_metric(engine)
    assert stored.taken() is True
    assert stored.left_over() == [("e-1", '{"action": "LogMetric"}')]


def test_a_write_rolled_back_takes_its_record_with_it(engine: Engine, stored: StoredEvents) -> None:
    stored.offer("e-2", "{}")
    log_metric(engine, keep=False)
    assert stored.taken() is False
    assert stored_ids(stored) == []
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Metric)) == 0


def test_an_offer_not_taken_is_not_left_for_a_later_write(
    engine: Engine, stored: StoredEvents
) -> None:
    stored.offer("e-3", "{}")  # a call that committed nothing
    assert stored.taken() is False
    log_metric(engine)
    assert stored_ids(stored) == []


def test_rows_the_daemon_has_go_a_batch_at_a_time_with_a_later_commit(
    engine: Engine, stored: StoredEvents
) -> None:
    for n in range(DELETE_BATCH + 1):
        stored.offer(f"b-{n}", "{}")
        log_metric(engine)
        assert stored.taken()
    stored.recorded([f"b-{n}" for n in range(DELETE_BATCH - 1)])
    log_metric(engine)  # fewer than a batch recorded: nothing deleted yet
    assert len(stored_ids(stored)) == DELETE_BATCH + 1
    stored.recorded([f"b-{DELETE_BATCH - 1}"])
    log_metric(engine)
    assert stored_ids(stored) == [f"b-{DELETE_BATCH}"]
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(PENDING)) == 1
