"""Confinement of tenant processes (MLflow workers, endpoint instances) with bubblewrap.

A confined process runs in its own mount, PID, IPC and UTS namespaces (and network namespace
unless its stores need the network) and sees: the read-only software it runs (the system's
``/usr``, the Python installation, the virtual environment, mlfleet's own package), a few
read-only files of ``/etc`` (TLS roots, name resolution, time zone), a private ``/tmp``, and the
folders its ``View`` names. Nothing else: not the data dir, the daemon's keys, the control-plane
database, or another tenant's database, artifacts or sockets. It gets a minimal environment
(never the daemon's), cannot gain privileges (no_new_privs), and dies with the daemon.

When the daemon runs as root, bubblewrap sets the namespaces up with root's rights and
``setpriv`` then drops the process to the unprivileged ``mlfleet-sandbox`` user (created on
first use), which owns the folders the process writes. Otherwise bubblewrap runs unprivileged,
in a user namespace, as the daemon's own user.

Where bubblewrap is missing or cannot create namespaces, processes run unconfined: the daemon
says so at start and in ``/health``, and refuses to run model code (endpoints) unless started
with ``--allow-unconfined-model-code``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlfleet

log = logging.getLogger(__name__)

SANDBOX_USER = "mlfleet-sandbox"
# Variables of the daemon's environment a confined process keeps; everything else (database
# URLs, AWS keys, mlfleet's settings) stays with the daemon.
KEPT_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
# The parts of /etc a Python process needs to run, resolve names and verify TLS peers.
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/etc/mime.types",
)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass(frozen=True)
class View:
    """What a confined process sees besides the software: each folder at its own path."""

    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()
    network: bool = False


@dataclass(frozen=True)
class Spawned:
    process: asyncio.subprocess.Process
    # bubblewrap's init (pid 1 of the sandbox's PID namespace), None when unconfined. When it
    # dies (bubblewrap dies with the daemon) the kernel kills everything in the namespace.
    init_pid: int | None = None

    def terminate(self) -> None:
        """Ask the command to stop gracefully: SIGTERM to the command itself, since bubblewrap
        would pass on nothing and only kill it."""
        targets = [self.process.pid]
        if self.init_pid is not None:
            children = Path(f"/proc/{self.init_pid}/task/{self.init_pid}/children")
            with contextlib.suppress(OSError, ValueError):
                targets = [int(pid) for pid in children.read_text().split()] or targets
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def software_paths() -> tuple[Path, ...]:
    """The read-only software a worker runs: Python, the venv, mlfleet's package."""
    paths = {Path(sys.base_prefix), Path(sys.prefix), Path(mlfleet.__file__).parent.parent}
    return tuple(sorted(p.resolve() for p in paths))


class Sandbox:
    def __init__(self, run_dir: Path, allow_unconfined: bool = False) -> None:
        self.run_dir = run_dir
        self.allow_unconfined = allow_unconfined
        self._bwrap = shutil.which("bwrap")
        self._setpriv = shutil.which("setpriv")
        self._root = os.geteuid() == 0
        # The (uid, gid) confined processes run as, when the daemon is root.
        self.owner: tuple[int, int] | None = None
        self.reason = ""
        self.confined = self._probe()

    # set-up -------------------------------------------------------------------------------

    def _probe(self) -> bool:
        if self._bwrap is None:
            self.reason = "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
            return False
        if self._root:
            if self._setpriv is None:
                self.reason = "setpriv (util-linux) is not installed"
                return False
            try:
                self.owner = self._sandbox_user()
            except (OSError, subprocess.CalledProcessError, KeyError) as exc:
                self.reason = f"cannot create the user {SANDBOX_USER}: {exc}"
                return False
        self._write_passwd()
        try:
            probe = subprocess.run(
                self.wrap(["true"], View(), info_fd=None),
                capture_output=True,
                timeout=30,
                env=self.environment({}),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.reason = f"bubblewrap cannot run: {exc}"
            return False
        if probe.returncode != 0:
            said = probe.stderr.decode(errors="replace").strip()
            self.reason = f"bubblewrap cannot create namespaces here: {said}"
            return False
        return True

    @staticmethod
    def _sandbox_user() -> tuple[int, int]:
        try:
            entry = pwd.getpwnam(SANDBOX_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    SANDBOX_USER,
                ],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(SANDBOX_USER)
        return entry.pw_uid, entry.pw_gid

    def _write_passwd(self) -> None:
        # Only the process's own user: the machine's accounts are none of a tenant's business,
        # but Python's getpass and MLflow want a name for the current uid.
        uid, gid = self.owner or (os.getuid(), os.getgid())
        for name, line in (
            ("passwd", f"mlfleet:x:{uid}:{gid}:mlfleet:/tmp:/bin/false\n"),
            ("group", f"mlfleet:x:{gid}:\n"),
        ):
            path = self.run_dir / name
            path.write_text(line)
            path.chmod(0o644)

    # use ----------------------------------------------------------------------------------

    def give(self, *paths: Path) -> None:
        """Make folders the confined user's, so it can write them, with what they hold at the
        first level: a database the daemon copied or read (its -wal and -shm), a model folder.
        Deeper content was written by the confined user itself."""
        if self.owner is None or not self.confined:
            return
        uid, gid = self.owner
        for top in paths:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for path in (top, *top.iterdir()):
                    if path.lstat().st_uid != uid:
                        os.lchown(path, uid, gid)

    def give_all(self, top: Path) -> None:
        """Make a folder and everything in it the confined user's: files the daemon itself
        wrote into a store (a restore's)."""
        if self.owner is None or not self.confined:
            return
        uid, gid = self.owner
        for folder, subfolders, names in os.walk(top):
            for name in (".", *subfolders, *names):
                path = Path(folder) / name
                if path.lstat().st_uid != uid:
                    os.lchown(path, uid, gid)

    @staticmethod
    def environment(extra: dict[str, str]) -> dict[str, str]:
        kept = {k: os.environ[k] for k in KEPT_ENVIRONMENT if k in os.environ}
        return {**kept, "HOME": "/tmp", "TMPDIR": "/tmp", **extra}

    def wrap(self, argv: list[str], view: View, info_fd: int | None) -> list[str]:
        """``argv`` as a bubblewrap command line."""
        assert self._bwrap is not None
        args = [
            self._bwrap,
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]
        if not self._root:
            args.append("--unshare-user")
        if not view.network:
            args.append("--unshare-net")
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
        # Folders bubblewrap makes on the way to a mount point would follow the daemon's
        # umask (0077), which the confined user could not traverse.
        mounted = (*software_paths(), *view.readable, *view.writable, Path("/etc/passwd"))
        for parent in sorted({a for p in mounted for a in p.parents if a != Path("/")}):
            if parent != Path("/tmp"):
                args += ["--perms", "0755", "--dir", str(parent)]
        for system in SYSTEM_DIRS:
            args += ["--ro-bind-try", system, system]
        for path in (*software_paths(), *view.readable):
            args += ["--ro-bind", str(path), str(path)]
        for etc in ETC_FILES:
            args += ["--ro-bind-try", etc, etc]
        args += [
            "--ro-bind",
            str(self.run_dir / "passwd"),
            "/etc/passwd",
            "--ro-bind",
            str(self.run_dir / "group"),
            "/etc/group",
        ]
        for path in view.writable:
            args += ["--bind", str(path), str(path)]
        args += ["--chdir", "/tmp", "--"]
        if self.owner is not None:
            uid, gid = self.owner
            assert self._setpriv is not None
            args += [
                self._setpriv,
                f"--reuid={uid}",
                f"--regid={gid}",
                "--clear-groups",
                "--no-new-privs",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ]
        return args + argv

    async def spawn(
        self,
        argv: list[str],
        view: View,
        env: dict[str, str],
        stdout: int,
        pass_fds: tuple[int, ...] = (),
    ) -> Spawned:
        """Start ``argv`` confined (or not, see ``confined``), its output to ``stdout``."""

        async def start(command: list[str], fds: tuple[int, ...]) -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=asyncio.subprocess.STDOUT,
                env=self.environment(env),
                preexec_fn=die_with_parent,
                pass_fds=fds,
            )

        if not self.confined:
            return Spawned(await start(argv, pass_fds))
        info_read, info_write = os.pipe()
        try:
            process = await start(self.wrap(argv, view, info_write), (*pass_fds, info_write))
        finally:
            os.close(info_write)
        try:
            # bubblewrap writes a small JSON object in several writes and closes its end
            # before it runs the command (or writes nothing if it fails first).
            info = await asyncio.to_thread(_read_all, info_read)
        finally:
            os.close(info_read)
        try:
            init_pid: int | None = int(json.loads(info)["child-pid"])
        except (ValueError, KeyError, TypeError):
            init_pid = None  # bubblewrap failed before starting it: its exit says why
        return Spawned(process, init_pid)

    @property
    def runs_as(self) -> str:
        return SANDBOX_USER if self.owner else "the daemon's own user"

    def summary(self) -> str:
        """One line for the daemon's start banner."""
        if self.confined:
            return f"bubblewrap (each server and endpoint confined, as {self.runs_as})"
        allowed = "deployed anyway" if self.allow_unconfined else "refused"
        return f"NONE: processes run unconfined ({self.reason}); model code is {allowed}"

    def describe(self) -> dict[str, object]:
        """The sandbox as /health reports it."""
        if self.confined:
            return {"confined": True, "tool": "bubblewrap", "runsAs": self.runs_as}
        return {
            "confined": False,
            "reason": self.reason,
            "modelCodeAllowed": self.allow_unconfined,
        }


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Be sent SIGTERM when the daemon dies: its processes must not outlive it (killed with
    SIGKILL) and hold sockets and SQLite locks; the restarted daemon starts fresh ones.
    bubblewrap passes it on (--die-with-parent)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
