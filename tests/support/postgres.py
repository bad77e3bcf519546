"""A throwaway PostgreSQL cluster for tests that stop, restart or kill it, so that the machine's
shared cluster on 127.0.0.1:5432 is never touched.

``PrivateCluster`` runs ``initdb`` (at its first start) into a folder of its own under
``/var/tmp``: PostgreSQL refuses to run as root, so its binaries run as the ``postgres`` OS user
(through ``runuser``), and pytest's tmp_path is private to root. The cluster listens on 127.0.0.1
on a free port with trust authentication and keeps its Unix socket in its own folder.
Durability is PostgreSQL's default (fsync and synchronous_commit on): an ``immediate`` stop is a
crash of PostgreSQL, and a commit it acknowledged must survive it. As a context manager it is
started on entry, and stopped and removed on exit; its log is copied to ``keep_log_in`` (the
test's tmp_path, say) first. Where the binaries or the ``postgres`` user are missing, the test is
skipped with the reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Literal

import pytest

from support.daemon import free_port
from support.waiting import wait_for

BIN = Path(os.environ.get("MLFLEET_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"
TIMEOUT = 60  # seconds for pg_ctl to see the cluster up or down

StopMode = Literal["smart", "fast", "immediate"]


class PrivateCluster:
    """One PostgreSQL cluster; ``url`` is its ``postgres`` database as its superuser."""

    def __init__(self, keep_log_in: Path | None = None) -> None:
        missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (BIN / name).is_file()]
        if missing:
            pytest.skip(f"PostgreSQL's {', '.join(missing)} not found in {BIN}")
        if shutil.which("runuser") is None:
            pytest.skip("runuser is missing (it runs PostgreSQL as its own OS user)")
        try:
            self._user = pwd.getpwnam(OS_USER)
        except KeyError:
            pytest.skip(f"no {OS_USER!r} OS user to run PostgreSQL as")
        self.port = free_port()
        self.url = self.url_of("postgres")
        self._keep_log_in = keep_log_in
        self.root: Path | None = None

    def url_of(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def data(self) -> Path:
        assert self.root is not None, "the cluster was never started"
        return self.root / "data"

    @property
    def log(self) -> Path:
        assert self.root is not None, "the cluster was never started"
        return self.root / "postgres.log"

    def _init(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mlfleet-pg-", dir="/var/tmp"))
        os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self._run(
            "initdb",
            f"--pgdata={self.data}",
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            # Only initdb's own files go unsynced; the cluster's commits are synced as usual.
            "--no-sync",
            "--no-instructions",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            # A daemon, its servers' workers (each with MLflow's pool of connections), the test.
            "max_connections": "200",
            "shared_buffers": "32MB",
            "fsync": "on",
            "synchronous_commit": "on",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            ["runuser", "-u", OS_USER, "--", str(BIN / program), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT + 30,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{program} {' '.join(args)} exited with {done.returncode}:\n"
                f"{done.stdout}{done.stderr}\n{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except (OSError, AssertionError):
            return ""

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", f"--pgdata={self.data}", "--wait", f"--timeout={TIMEOUT}", *args)

    def start(self) -> PrivateCluster:
        if self.root is None:
            self._init()
        # After a kill -9 of the postmaster its backends leave as they notice, and PostgreSQL
        # refuses to start while one of them still holds the old shared memory.
        wait_for(lambda: not self._processes(), TIMEOUT, what="the old PostgreSQL processes")
        pid = self._postmaster()
        if pid is not None and not _alive(pid):
            # Left by a postmaster killed -9 and not reaped (a zombie, where PID 1 reaps
            # nothing): PostgreSQL would take its PID for a server still running.
            socket = self.root / f".s.PGSQL.{self.port}"
            for lock in (self.data / "postmaster.pid", Path(f"{socket}.lock"), socket):
                lock.unlink(missing_ok=True)
        self._ctl(f"--log={self.log}", "start")
        return self

    def stop(self, mode: StopMode = "fast") -> None:
        self._ctl(f"--mode={mode}", "stop")

    def restart(self, mode: Literal["fast", "immediate"] = "immediate") -> None:
        """Stop (``immediate``: a crash, recovered from the WAL at the start) and start again."""
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """``kill -9`` of the postmaster; ``start`` brings the cluster back."""
        pid = self._postmaster()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not _alive(pid), 30, what=f"postmaster {pid} to die")

    def running(self) -> bool:
        pid = self._postmaster()
        return pid is not None and _alive(pid)

    def _postmaster(self) -> int | None:
        if self.root is None:
            return None
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _processes(self) -> list[int]:
        """This cluster's processes still running: each has the data directory as its cwd."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if Path(os.readlink(entry / "cwd")) == self.data and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def close(self) -> None:
        """Stop the cluster, whatever its state, keep its log if asked, remove its folder."""
        if self.root is None:
            return
        if self.running():
            try:
                self.stop("immediate")
            except AssertionError:
                self.kill()
        for pid in self._processes():
            os.kill(pid, signal.SIGKILL)
        if self._keep_log_in is not None and self.log.exists():
            self._keep_log_in.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.log, self._keep_log_in / self.log.name)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PrivateCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (a postmaster killed, not yet reaped) does not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
