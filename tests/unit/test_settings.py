"""Settings precedence: flags > MLFLEET_* environment > config file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlfleet.settings import DEFAULT_PORT, load_settings


def test_precedence(tmp_path: Path) -> None:
    (tmp_path / "mlfleet.toml").write_text(
        'region = "eu-west-1"\nport = 9000\naccount_id = "111122223333"\n'
    )
    env = {"MLFLEET_PORT": "9100", "MLFLEET_DATA_DIR": str(tmp_path)}
    settings = load_settings({"account_id": "444455556666"}, environ=env)
    assert settings.data_dir == tmp_path
    assert settings.region == "eu-west-1"  # file
    assert settings.port == 9100  # env beats file
    assert settings.account_id == "444455556666"  # flag beats file
    assert settings.endpoint_url == "http://127.0.0.1:9100"
    assert settings.control_db_url == f"sqlite:///{tmp_path / 'mlfleet.db'}"
    assert not settings.uses_postgres


def test_defaults_and_public_url(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": tmp_path}, environ={})
    assert settings.port == DEFAULT_PORT
    assert settings.endpoint_url == f"http://127.0.0.1:{DEFAULT_PORT}"
    public = load_settings(
        {"data_dir": tmp_path, "public_url": "https://mlflow.example/"}, environ={}
    )
    assert public.endpoint_url == "https://mlflow.example"
    pg = load_settings({"data_dir": tmp_path, "database_url": "postgresql://u@h/db"}, environ={})
    assert pg.uses_postgres


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mlfleet.toml").write_text("regoin = 'typo'\n")
    with pytest.raises(ValueError, match="regoin"):
        load_settings({"data_dir": tmp_path}, environ={})


def test_switches_read_true_and_false_in_their_usual_spellings(tmp_path: Path) -> None:
    (tmp_path / "mlfleet.toml").write_text("connection_handoff = false\n")
    assert load_settings({"data_dir": tmp_path}, environ={}).connection_handoff is False
    for word, expected in [("false", False), ("0", False), ("Off", False), ("true", True)]:
        env = {"MLFLEET_DATA_DIR": str(tmp_path), "MLFLEET_CONNECTION_HANDOFF": word}
        assert load_settings({}, environ=env).connection_handoff is expected
    env = {"MLFLEET_DATA_DIR": str(tmp_path), "MLFLEET_CONNECTION_HANDOFF": "maybe"}
    with pytest.raises(ValueError, match="connection_handoff = 'maybe': expected true or false"):
        load_settings({}, environ=env)


def test_artifact_roots_from_flag_environment_and_file(tmp_path: Path) -> None:
    assert load_settings({"data_dir": tmp_path}, environ={}).allowed_artifact_roots == (
        tmp_path / "artifacts",
    )
    (tmp_path / "mlfleet.toml").write_text('artifact_roots = ["/srv/a", "~/b"]\n')
    from_file = load_settings({"data_dir": tmp_path}, environ={})
    assert from_file.allowed_artifact_roots == (Path("/srv/a"), Path.home() / "b")
    env = {"MLFLEET_DATA_DIR": str(tmp_path), "MLFLEET_ARTIFACT_ROOTS": "/x:/y"}
    assert load_settings({}, environ=env).artifact_roots == (Path("/x"), Path("/y"))
    flag = load_settings({"artifact_roots": (Path("/z"),)}, environ=env)
    assert flag.artifact_roots == (Path("/z"),)


def test_tls_beyond_loopback_or_with_a_certificate(tmp_path: Path) -> None:
    for host in ["127.0.0.1", "::1", "localhost", "127.0.0.2"]:
        assert not load_settings({"data_dir": tmp_path, "host": host}, environ={}).tls
    anywhere = load_settings({"data_dir": tmp_path, "host": "0.0.0.0"}, environ={})
    assert anywhere.tls and anywhere.makes_own_certificate
    assert anywhere.endpoint_url == f"https://127.0.0.1:{DEFAULT_PORT}"
    assert anywhere.ca_file == tmp_path / "ca.pem"
    named = load_settings({"data_dir": tmp_path, "host": "mlfleet.example"}, environ={})
    assert named.endpoint_url == f"https://mlfleet.example:{DEFAULT_PORT}"
    given = {"data_dir": tmp_path, "tls_cert": "/etc/c.pem", "tls_key": "/etc/k.pem"}
    settings = load_settings(given, environ={})
    assert settings.tls and not settings.makes_own_certificate
    assert settings.endpoint_url == f"https://127.0.0.1:{DEFAULT_PORT}"
    assert Path("/etc/k.pem") in settings.secret_files
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        load_settings({"data_dir": tmp_path, "tls_cert": "/etc/c.pem"}, environ={})
