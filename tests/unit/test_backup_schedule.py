"""When the daily schedule backs a server up, and which of its backups the retention removes."""

from __future__ import annotations

from mlfleet.backups.schedule import (
    DAY_SECONDS,
    DEFAULT_RETENTION_DAYS,
    Kept,
    backup_due,
    expired,
    retention_days,
)

NOW = 1_000_000_000.0


def test_the_first_daily_backup_is_a_day_after_creation() -> None:
    assert not backup_due(NOW - DAY_SECONDS + 60, [], NOW, DAY_SECONDS)
    assert backup_due(NOW - DAY_SECONDS, [], NOW, DAY_SECONDS)


def test_the_next_is_a_day_after_the_newest_completed_backup_of_any_origin() -> None:
    made = NOW - 10 * DAY_SECONDS
    recent = [Kept("m", "Maintenance", "Completed", NOW - 3600)]
    assert not backup_due(made, recent, NOW, DAY_SECONDS)
    failed = [Kept("f", "Daily", "Failed", NOW - 3600)]
    assert backup_due(made, failed, NOW, DAY_SECONDS)
    running = [Kept("r", "Daily", "InProgress", NOW - 2 * DAY_SECONDS)]
    assert not backup_due(made, running, NOW, DAY_SECONDS)


def test_retention_removes_the_daemons_old_backups_but_never_the_newest_or_a_users() -> None:
    old = NOW - 8 * DAY_SECONDS
    kept = [
        Kept("daily-old", "Daily", "Completed", old),
        Kept("upgrade-old", "Upgrade", "Completed", old - 1),
        Kept("failed-old", "Daily", "Failed", old),
        Kept("manual-old", "Manual", "Completed", old - 2),
        Kept("daily-new", "Daily", "Completed", NOW - DAY_SECONDS),
    ]
    assert expired(kept, NOW, 7) == ["daily-old", "upgrade-old", "failed-old"]
    # The only completed backup stays, however old.
    assert expired(kept[:1], NOW, 7) == []


def test_retention_is_read_from_the_tag() -> None:
    assert retention_days({}) == DEFAULT_RETENTION_DAYS
    assert retention_days({"mlfleet:backup-retention-days": "30"}) == 30
    assert retention_days({"mlfleet:backup-retention-days": "soon"}) == DEFAULT_RETENTION_DAYS
    assert retention_days({"mlfleet:backup-retention-days": "-1"}) == DEFAULT_RETENTION_DAYS
