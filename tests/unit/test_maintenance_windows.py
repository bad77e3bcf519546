"""Which servers a weekly maintenance window begins, on a real control-plane database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mlfleet.fleet.maintenance import QUIET_SECONDS, due, window_of
from mlfleet.state.db import open_database
from mlfleet.state.models import TrackingServer

TUESDAY_0330 = datetime(2026, 12, 1, 3, 30, 20, tzinfo=UTC).timestamp()


def server(name: str, window: str | None, status: str, last: float | None) -> TrackingServer:
    user = {"UserProfileName": "u", "IamIdentity": {"Arn": "a", "PrincipalId": "p"}}
    return TrackingServer(
        id=name,
        name=name,
        arn=f"arn:{name}",
        artifact_store_uri="file:///x",
        size="Small",
        mlflow_version="3",
        role_arn="r",
        weekly_maintenance_window_start=window,
        tags=[],
        status=status,
        desired_state="Running",
        metadata_db_uri="",
        created_at=0.0,
        created_by=user,
        last_modified_at=0.0,
        last_modified_by=user,
        last_maintenance_at=last,
    )


def test_a_window_begins_once_for_serving_servers_in_its_minute(tmp_path: Path) -> None:
    assert window_of(TUESDAY_0330) == "Tue:03:30"
    sessions = open_database(f"sqlite:///{tmp_path / 'control.db'}")
    with sessions.begin() as session:
        session.add_all(
            [
                server("now", "Tue:03:30", "Created", None),
                server("last-week", "Tue:03:30", "MaintenanceComplete", TUESDAY_0330 - 7 * 86400),
                server("just-done", "Tue:03:30", "Updated", TUESDAY_0330 - 60),
                server("stopped", "Tue:03:30", "Stopped", None),
                server("later", "Tue:03:31", "Created", None),
                server("none", None, "Created", None),
            ]
        )
    assert sorted(due(sessions, TUESDAY_0330)) == ["last-week", "now"]
    # Once the hour after a maintenance has passed, the same minute a week on begins another.
    assert "just-done" in due(sessions, TUESDAY_0330 + 7 * 86400)
    assert QUIET_SECONDS < 7 * 86400
