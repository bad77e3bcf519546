"""Daemon settings: flags > environment (MLFLEET_*) > config file > defaults.

The config file is TOML at ``<data-dir>/mlfleet.toml`` (or ``--config``); its keys are the field
names below. Every field can also be given as ``MLFLEET_<FIELD>`` in the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8470


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path.home() / ".mlfleet")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    region: str = "us-east-1"
    account_id: str = "123456789012"
    # Control-plane database (SQLAlchemy URL). Empty: a SQLite file in the data dir.
    # A postgresql:// URL also puts each tracking server's metadata DB on that PostgreSQL server.
    database_url: str = ""
    # Base URL that clients use to reach the daemon, when it differs from http://host:port
    # (behind a proxy or a published hostname).
    public_url: str = ""
    # S3-compatible endpoint for s3:// artifact stores (empty: AWS S3 itself).
    s3_endpoint_url: str = ""
    # How long the gateway waits for a server that is starting before answering 503.
    gateway_start_wait_seconds: float = 5.0
    # How long the gateway holds a request that woke a sleeping server (fleet.idle) before
    # answering 503; its wake is a worker's start, seconds on a loaded machine.
    gateway_wake_wait_seconds: float = 120.0
    # Keep a spare MLflow worker with MLflow imported, so that a server's worker starts in a
    # fraction of a second (runtime.warm; needs root). Off: every worker starts cold, and the
    # spare's memory (about that of one worker) is saved.
    warm_starts: bool = True
    # How long a tracking server goes without a request before it sleeps (fleet.idle), for a
    # server without the tag mlfleet:idle-timeout: 30s, 15m, 2h; empty: never.
    idle_timeout: str = ""
    # In-flight API requests per MLflow worker process; the rest queue in the gateway
    # (bench/: 2 keeps throughput and cuts p99 at concurrency 8 from ~0.7 s to ~0.1 s).
    max_inflight_per_worker: int = 2
    # Hand a client's keep-alive connection, authenticated with HTTP Basic, to the MLflow worker
    # after the gateway answered its first call, so later calls skip the hop (gateway.handover).
    connection_handoff: bool = True
    # Largest request body of an MLflow API call the gateway accepts (413 above it, unread).
    # Artifact uploads through the artifact proxy (mlflow-artifacts routes) are streamed and not
    # limited. Chunked bodies are also bounded by the daemon's aiohttp limit of 16 MiB.
    max_api_body_bytes: int = 16 * 1024 * 1024
    # The key that encrypts access-key secrets at rest (a Fernet key file, created on first
    # start). Empty: <data-dir>/master.key. Daemons sharing one PostgreSQL share this file.
    master_key_file: str = ""
    # Shortest DurationSeconds that AssumeRole accepts. AWS's floor is 900; lower it only to
    # watch temporary credentials expire in tests and demos.
    sts_min_duration_seconds: int = 900
    # "iam": every request is authorized against its principal's policies. "authenticate-only":
    # requests are still authenticated but never refused by policy, for a single-user machine
    # and for measuring what authorization costs (bench/); the daemon warns at start.
    authorization: str = "iam"
    # Where backups are kept: empty for <data-dir>/backups, or s3://bucket[/prefix] (the daemon's
    # AWS credentials and s3_endpoint_url), each server's under <prefix>/<server-id>/.
    backup_location: str = ""
    # How often a tracking server is backed up by the daily schedule (backups.schedule);
    # shorter only to watch the schedule in tests and demos.
    daily_backup_seconds: float = 86400.0
    # Longest wait between two attempts to deliver an event to a target that is failing.
    event_retry_max_backoff_seconds: float = 30.0
    # Folders that file: artifact stores may live under (none given: <data-dir>/artifacts).
    # In the environment, separated like PATH; in the config file, a list of strings.
    artifact_roots: tuple[Path, ...] = ()
    # HTTPS: the certificate (chain) and its private key, PEM files. Neither given and the host
    # beyond loopback: the daemon makes a certificate and a CA (<data-dir>/ca.pem) itself.
    tls_cert: str = ""
    tls_key: str = ""
    # Deploy model code even where processes cannot be confined (runtime.sandbox), where it
    # runs with the daemon's rights: its keys, its databases, every tenant's data.
    allow_unconfined_model_code: bool = False
    # Where tracking servers may connect out (MLflow's AI gateway, judges) besides the built-in
    # LLM provider hosts (egress.policy): host names (* wildcards) for public addresses only;
    # addresses or networks (a local model server, say) allowed whatever their kind; each with
    # an optional :port. In the environment, comma-separated; in the config file, a list.
    egress_allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: give both, or neither")

    @property
    def tls(self) -> bool:
        """HTTPS is served: with a certificate given, or to listen beyond loopback."""
        return bool(self.tls_cert) or not _loopback(self.host)

    @property
    def makes_own_certificate(self) -> bool:
        return self.tls and not self.tls_cert

    @property
    def ca_file(self) -> Path:
        """The CA of the certificate the daemon makes, for clients to trust."""
        return self.data_dir / "ca.pem"

    @property
    def endpoint_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def master_key_path(self) -> Path:
        return (
            Path(self.master_key_file).expanduser()
            if self.master_key_file
            else (self.data_dir / "master.key")
        )

    @property
    def allowed_artifact_roots(self) -> tuple[Path, ...]:
        return self.artifact_roots or (self.data_dir / "artifacts",)

    @property
    def secret_files(self) -> tuple[Path, ...]:
        """Files of mlfleet's secrets that no artifact store may reach, wherever they are."""
        given_key = (Path(self.tls_key).expanduser(),) if self.tls_key else ()
        return (self.master_key_path, *given_key)

    @property
    def control_db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'mlfleet.db'}"

    @property
    def uses_postgres(self) -> bool:
        return self.control_db_url.startswith("postgresql")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" (every address)


def _coerce(name: str, raw: Any) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    if kind == "Path":
        return Path(str(raw)).expanduser()
    if kind == "tuple[Path, ...]":
        items = str(raw).split(os.pathsep) if isinstance(raw, str) else list(raw)
        return tuple(Path(str(item)).expanduser() for item in items if str(item))
    if kind == "tuple[str, ...]":
        items = str(raw).split(",") if isinstance(raw, str) else list(raw)
        return tuple(str(item).strip() for item in items if str(item).strip())
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"{name} = {raw!r}: expected true or false")
        return text in ("true", "1", "yes", "on")
    return str(raw)


def load_settings(
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    env = os.environ if environ is None else environ
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    names = [f.name for f in dataclasses.fields(Settings)]
    from_env = {n: env[f"MLFLEET_{n.upper()}"] for n in names if f"MLFLEET_{n.upper()}" in env}

    data_dir = flags.get("data_dir") or from_env.get("data_dir") or Settings().data_dir
    path = config_file or Path(str(data_dir)).expanduser() / "mlfleet.toml"
    from_file: dict[str, Any] = {}
    if path.is_file():
        with path.open("rb") as fh:
            from_file = tomllib.load(fh)
        unknown = set(from_file) - set(names)
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}; known: {names}")

    merged = {**from_file, **from_env, **flags, "data_dir": data_dir}
    return Settings(**{k: _coerce(k, v) for k, v in merged.items()})
