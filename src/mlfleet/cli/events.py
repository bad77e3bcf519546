"""``mlfleet events``: the dead-letter store, listed and redriven where the daemon runs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.cli.common import DatabaseUrl, DataDir, console
from mlfleet.events.dead_letters import dead_letters, redrive
from mlfleet.settings import load_settings
from mlfleet.state.db import open_database
from mlfleet.state.models import EventDelivery

events_app = typer.Typer(no_args_is_help=True)

Rule = Annotated[str | None, typer.Option("--rule", help="Only this rule's deliveries.")]


def _sessions(data_dir: Path | None, database_url: str | None) -> sessionmaker[Session]:
    settings = load_settings({"data_dir": data_dir, "database_url": database_url})
    return open_database(settings.control_db_url)


@events_app.command("dead-letters")
def list_dead_letters(
    rule: Rule = None, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Deliveries that were given up on, with why."""
    table = Table("id", "rule", "target", "event", "failed", "attempts", "last error", "event body")
    for column in table.columns:
        column.overflow = "fold"
    for delivery in dead_letters(_sessions(data_dir, database_url), rule):
        failed = datetime.fromtimestamp(delivery.finished_at or 0, UTC)
        table.add_row(
            str(delivery.id),
            escape(delivery.rule),
            escape(delivery.target_id),
            delivery.event_id,
            failed.strftime("%Y-%m-%dT%H:%M:%SZ"),
            str(delivery.attempts),
            escape(delivery.last_error or ""),
            escape(delivery.payload[:200]),
        )
    console.print(table)


@events_app.command("redrive")
def redrive_dead_letters(
    ids: Annotated[list[int] | None, typer.Option("--id", help="Only these deliveries.")] = None,
    rule: Rule = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Send dead-lettered deliveries again (all of them, a rule's, or the given ids)."""
    sessions = _sessions(data_dir, database_url)
    chosen = ids
    if rule is not None:
        with sessions() as session:
            of_rule = session.scalars(
                select(EventDelivery.id).where(
                    EventDelivery.state == "dead", EventDelivery.rule == rule
                )
            ).all()
        chosen = [i for i in of_rule if ids is None or i in ids]
    count = redrive(sessions, chosen)
    console.print(f"redriven: {count} deliveries (the daemon sends them within seconds)")
