"""Warm starts: MLflow imported ahead of time by a confined spare process, handed to a server.

A worker's cold start is mostly the import of MLflow, seconds of one core. A spare is a worker
process started before any server needs it: confined like every worker (runtime.sandbox) and
seeing only its software and an empty folder of its own, its slot, it imports MLflow and waits
(runtime.mlflow_worker, ``--spare-fd``). To make it a server's worker, the daemon bind-mounts
the folders the server's workers may write (its database's, its artifacts', its sockets') into
the slot and sends it the worker's arguments and environment, paths rewritten to the slot,
with its log file; it serves a fraction of a second later. Its socket, made in the mounted
sockets folder, is where the daemon expects it. When it exits, its slot is unmounted and
removed; a spare is used once, and another is started for the next server.

The mounts need root, and mount propagation into the sandboxes: the daemon enters a mount
namespace of its own at start (``own_mount_namespace``: nothing it mounts shows on the machine
or outlives it), where the slots' folder is a shared mount; bubblewrap makes each sandbox's
mounts slaves of it, so a mount made in a slot appears in the one sandbox that sees that slot,
and nothing a sandbox does (it cannot mount at all) comes back. Without root or bubblewrap,
workers start cold, as before.

Spares are kept per kind of worker (``Key``: its interpreter, what it may read, whether it has
the network), for the kinds the daemon asks for (``prepare``): one spare, and one again after
each is taken. The daemon keeps warm the most common kind, the installed MLflow with a database
and artifacts on this machine; workers of other releases, or with the network (a PostgreSQL
database, an S3 store), still start cold: warm ones are not built yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mlfleet.runtime.handoff import Channel, Generation, channel_pair
from mlfleet.runtime.sandbox import Sandbox, Spawned, View

log = logging.getLogger(__name__)

WORKER_MODULE = "mlfleet.runtime.mlflow_worker"
# A spare waits below every start a server waits for (runtime.local's FIRST and MORE).
SPARE_PRIORITY = 2
# What a spare says on its control socket once MLflow is imported; the start slot it holds
# meanwhile is given back after this long whatever it says.
READY = b"ready"
READY_TIMEOUT_SECONDS = 180.0


class Slots(Protocol):
    """runtime.local.StartSlots: how many processes may be starting at once."""

    def slot(self, priority: int) -> contextlib.AbstractAsyncContextManager[None]: ...


_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_SLAVE, _MS_SHARED = 0x1000, 0x4000, 1 << 19, 1 << 20
_MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def own_mount_namespace() -> bool:
    """Move this process into a mount namespace of its own whose mounts do not propagate back
    to the machine's (the machine's still show here). Only as root, and only while the process
    has one thread: a namespace is per thread, and every thread must share it."""
    if os.geteuid() != 0 or threading.active_count() != 1:
        return False
    libc = _libc()
    try:
        _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(libc.mount(None, b"/", None, _MS_REC | _MS_SLAVE, None), "mount --make-rslave /")
    except OSError as exc:
        log.warning("warm starts are off: no mount namespace of our own: %s", exc)
        return False
    return True


def _mount(source: Path | None, target: Path, flags: int, what: str) -> None:
    src = str(source).encode() if source else None
    _check(_libc().mount(src, str(target).encode(), None, flags, None), what)


def _unmount(target: Path) -> None:
    _libc().umount2(str(target).encode(), _MNT_DETACH)


@dataclass(frozen=True)
class Key:
    """The kind of worker a spare can become: all a sandbox is given at its start."""

    python: str
    readable: tuple[Path, ...]
    network: bool


@dataclass
class Spare:
    key: Key
    slot: Path
    spawned: Spawned
    channel: Channel
    control: socket.socket
    mounted: list[Path] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.spawned.process.returncode is None


class WarmPool:
    def __init__(
        self, sandbox: Sandbox, generation: Generation, start_slots: Slots, enabled: bool
    ) -> None:
        self._sandbox = sandbox
        self._generation = generation
        self._start_slots = start_slots
        self.slots_dir = sandbox.run_dir / "slots"
        self._spares: dict[Key, list[Spare]] = {}
        self._starting: dict[Key, asyncio.Task[None]] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        # The kinds kept warm (``prepare``).
        self._kinds: set[Key] = set()
        self.enabled = enabled and sandbox.confined and sandbox.owner is not None
        self.reason = (
            ""
            if self.enabled
            else (
                "off, or not possible here: warm starts need the daemon to run as root, with "
                "bubblewrap"
            )
        )
        if self.enabled:
            try:
                self._share_slots()
            except OSError as exc:
                self.enabled, self.reason = False, f"the slots folder cannot be shared: {exc}"
        if not self.enabled:
            log.info("workers start cold: %s", self.reason)

    def _share_slots(self) -> None:
        # Left by a daemon that was killed: its mounts went with its namespace.
        shutil.rmtree(self.slots_dir, ignore_errors=True)
        self.slots_dir.mkdir()
        _mount(self.slots_dir, self.slots_dir, _MS_BIND, "bind the slots folder")
        _mount(None, self.slots_dir, _MS_SHARED, "share the slots folder")

    def key_of(self, python: str, view: View) -> Key:
        return Key(python, view.readable, view.network)

    def prepare(self, key: Key) -> None:
        """Have a spare of ``key`` ready (started in the background if there is none), and
        one again after each is taken."""
        if not self.enabled or key.network:
            return
        self._kinds.add(key)
        if key in self._starting:
            return
        if any(s.alive for s in self._spares.get(key, [])):
            return
        self._starting[key] = asyncio.get_running_loop().create_task(self._start(key))

    async def _start(self, key: Key) -> None:
        # Its import is a start like any other: it takes a start slot, after every start a
        # server waits for, until it says it is ready (or dies).
        async with self._start_slots.slot(SPARE_PRIORITY):
            try:
                spare = await self._spawn(key)
            except Exception:
                log.exception("starting a spare MLflow worker failed; workers start cold")
                self._starting.pop(key, None)
                return
            self._spares.setdefault(key, []).append(spare)
            self._starting.pop(key, None)
            with contextlib.suppress(OSError, TimeoutError):
                ready = asyncio.get_running_loop().sock_recv(spare.control, len(READY))
                await asyncio.wait_for(ready, READY_TIMEOUT_SECONDS)

    async def _spawn(self, key: Key) -> Spare:
        slot = self.slots_dir / uuid.uuid4().hex[:12]
        # Traversable by the sandbox's user (the daemon's umask would make them its own only);
        # what is mounted on them has its own owner and mode.
        for folder in (slot, *(slot / str(i) for i in range(3))):  # at most three folders
            folder.mkdir()
            folder.chmod(0o755)
        channel, their_end = channel_pair()
        # Messages, not a stream: the assignment arrives whole, with its log file.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        argv = [
            key.python,
            "-m",
            WORKER_MODULE,
            "--spare-fd",
            str(theirs.fileno()),
            "--handoff-fd",
            str(their_end),
            "--generation-fd",
            str(self._generation.fd),
        ]
        view = View((slot,), key.readable, key.network)
        try:
            with (slot.parent / f"{slot.name}.log").open("ab") as logfile:
                spawned = await self._sandbox.spawn(
                    argv,
                    view,
                    {},
                    logfile.fileno(),
                    (theirs.fileno(), their_end, self._generation.fd),
                )
        except BaseException:
            channel.close()
            ours.close()
            raise
        finally:
            os.close(their_end)
            theirs.close()
        return Spare(key, slot, spawned, channel, ours)

    def take(self, key: Key) -> Spare | None:
        """A ready spare of ``key`` (and another started for the next), None if there is none
        or the kind is not one kept warm."""
        if key not in self._kinds:
            return None
        spares = self._spares.get(key, [])
        found = None
        while spares and found is None:
            spare = spares.pop()
            if spare.alive:
                found = spare
            else:
                self._discard(spare)
        self.prepare(key)
        return found

    def assign(
        self,
        spare: Spare,
        writable: tuple[Path, ...],
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
    ) -> Spawned:
        """Make ``spare`` the worker that ``argv`` and ``env`` describe, seeing ``writable``:
        each folder mounted into its slot, their paths rewritten to the slot's."""
        if len(writable) > 3:
            raise OSError(f"a spare takes at most 3 folders, not {len(writable)}")
        moves: list[tuple[str, str]] = []
        try:
            for index, folder in enumerate(writable):
                target = spare.slot / str(index)
                _mount(folder, target, _MS_BIND, f"bind {folder}")
                spare.mounted.append(target)
                moves.append((str(folder), str(target)))
        except OSError:
            self._discard(spare)
            raise
        # The longest first: a folder inside another is moved with its own slot.
        moves.sort(key=lambda move: len(move[0]), reverse=True)

        def moved(text: str) -> str:
            for old, new in moves:
                text = text.replace(old, new)
            return text

        assignment = json.dumps(
            {
                "argv": [moved(a) for a in argv],
                "env": {k: moved(v) for k, v in env.items()},
                # What `ps` shows: the arguments as the daemon named the folders.
                "title": [WORKER_MODULE, *argv],
            }
        ).encode()
        with log_path.open("ab") as logfile:
            try:
                socket.send_fds(spare.control, [assignment], [logfile.fileno()])
            except OSError:
                self._discard(spare)
                raise
        task = asyncio.get_running_loop().create_task(self._clean_after(spare))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return spare.spawned

    async def _clean_after(self, spare: Spare) -> None:
        await spare.spawned.process.wait()
        self._discard(spare)

    def _discard(self, spare: Spare) -> None:
        """Stop a spare (if it runs) and remove its slot, its mounts first."""
        if spare.alive:
            spare.spawned.process.kill()
        spare.channel.close()
        with contextlib.suppress(OSError):
            spare.control.close()
        for target in spare.mounted:
            _unmount(target)
        spare.mounted.clear()
        with contextlib.suppress(OSError):
            for index in range(3):
                (spare.slot / str(index)).rmdir()
            spare.slot.rmdir()
            (spare.slot.parent / f"{spare.slot.name}.log").unlink(missing_ok=True)

    async def close(self) -> None:
        for task in self._starting.values():
            task.cancel()
        for spares in self._spares.values():
            for spare in spares:
                self._discard(spare)
                with contextlib.suppress(ProcessLookupError):
                    await spare.spawned.process.wait()
        self._spares.clear()
        for task in list(self._cleanups):
            with contextlib.suppress(asyncio.CancelledError):
                await task
