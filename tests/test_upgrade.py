"""A data dir written before IAM existed keeps working after the upgrade."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from mlfleet.state.db import MIGRATIONS
from support.daemon import Daemon

KEY_ID = "AKIAOLDADMINKEY00001"
SECRET = "old/plaintext+secret0123456789abcdefghij"


def database_at_revision(path: Path, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def test_pre_iam_data_dir_upgrades_in_place(tmp_path: Path) -> None:
    data_dir = tmp_path / "old"
    data_dir.mkdir()
    db = data_dir / "mlfleet.db"
    database_at_revision(db, "0001")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO access_keys VALUES (?, ?, 'admin', ?, ?, 'Active', ?)",
            (
                KEY_ID,
                SECRET,
                "arn:aws:iam::123456789012:user/admin",
                "AIDAOLDADMIN000000000",
                time.time(),
            ),
        )

    daemon = Daemon(data_dir).start()
    try:
        assert daemon.credentials == (KEY_ID, SECRET)
        iam = daemon.client("iam")
        admin = iam.get_user(UserName="admin")["User"]
        assert admin["UserId"] == "AIDAOLDADMIN000000000"
        attached = iam.list_attached_user_policies(UserName="admin")["AttachedPolicies"]
        assert [p["PolicyName"] for p in attached] == ["AdministratorAccess"]
        assert daemon.client().list_mlflow_tracking_servers()["TrackingServerSummaries"] == []
    finally:
        daemon.stop()
    # The secret that was stored as is has been encrypted.
    assert SECRET.encode() not in db.read_bytes()
    assert (data_dir / "master.key").stat().st_mode & 0o077 == 0
