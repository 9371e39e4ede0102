"""The run lock: one driver per run directory, stale locks of dead drivers taken over.

The lock file holds a random token. Workers pass it back when they commit ("fencing"):
a part committed on behalf of a driver that has since lost the lock is refused.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import psutil
import pyarrow.fs as pafs
from pydantic import BaseModel

from storage.fs import Location, exists, read_bytes, write_bytes

log = logging.getLogger(__name__)

LOCK_NAME = "_LOCK"
UNREADABLE_GRACE_S = 5.0


class RunLocked(RuntimeError):
    """Another live driver holds the run directory."""


class LockInfo(BaseModel):
    token: str
    host: str
    pid: int
    pid_started: float
    command: str
    started_at: float
    heartbeat_at: float


def _this_process(command: str, token: str) -> LockInfo:
    now = time.time()
    return LockInfo(
        token=token,
        host=socket.gethostname(),
        pid=os.getpid(),
        pid_started=psutil.Process().create_time(),
        command=command,
        started_at=now,
        heartbeat_at=now,
    )


def _is_dead(info: LockInfo, stale_after_s: float) -> bool:
    """A holder is dead if its process is gone (same host) or its heartbeat is stale."""
    if info.host == socket.gethostname():
        try:
            return abs(psutil.Process(info.pid).create_time() - info.pid_started) > 1.0
        except psutil.NoSuchProcess:
            return True
    return time.time() - info.heartbeat_at > stale_after_s


class RunLock:
    """Exclusive, heartbeated ownership of a run directory."""

    def __init__(self, loc: Location, *, stale_after_s: float = 60.0, heartbeat_s: float = 10.0):
        self.loc = loc
        self.path = loc.path(LOCK_NAME)
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    # -- acquisition -------------------------------------------------------------------
    def acquire(self, command: str) -> str:
        info = _this_process(command, self.token)
        for _ in range(3):
            if self._create_exclusive(info):
                self._start_heartbeat(info)
                return self.token
            holder = self.holder()
            if holder is None:
                # Released between our two calls, or a lock file left empty / garbled by a
                # driver that died while creating it: no live writer leaves it so for long.
                if self._unreadable_for() > UNREADABLE_GRACE_S:
                    self._break(None)
                else:
                    time.sleep(0.05)
                continue
            if not _is_dead(holder, self.stale_after_s):
                raise RunLocked(
                    f"run {self.loc.uri} is in use by `{holder.command}` (pid {holder.pid} on "
                    f"{holder.host}, heartbeat {time.time() - holder.heartbeat_at:.0f}s ago). "
                    f"Wait for it to finish, or stop it; a dead driver's lock is taken over "
                    f"automatically after {self.stale_after_s:.0f}s without heartbeat."
                )
            self._break(holder)
        raise RunLocked(f"could not take the lock of {self.loc.uri}: it keeps changing hands")

    def _create_exclusive(self, info: LockInfo) -> bool:
        data = info.model_dump_json().encode()
        self.loc.fs.create_dir(self.loc.root, recursive=True)
        if self.loc.fs.type_name == "local":
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except BaseException:
                # A lock file left empty (a full disk) would hold off the next driver for
                # UNREADABLE_GRACE_S; ours never held the run, so it goes at once.
                os.unlink(self.path)
                raise
            return True
        # Object stores offer no create-if-absent through pyarrow: write, then read back
        # after a settle delay; the last writer wins and the others see a foreign token.
        if exists(self.loc, self.path):
            return False
        write_bytes(self.loc, self.path, data)
        time.sleep(0.5)
        holder = self.holder()
        return holder is not None and holder.token == self.token

    def _unreadable_for(self) -> float:
        """Seconds since an existing but unreadable lock file was written (0 if absent)."""
        info = self.loc.fs.get_file_info(self.path)
        if info.type != pafs.FileType.File or info.mtime is None:
            return 0.0
        return time.time() - info.mtime.timestamp()

    def _break(self, holder: LockInfo | None) -> None:
        """Remove a dead holder's lock (None: an unreadable one); of several racing takers
        only one rename wins."""
        if self.loc.fs.type_name == "local":
            aside = f"{self.path}.stale-{uuid.uuid4().hex}"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return
            os.unlink(aside)
        else:
            current = self.holder()
            if (current.token if current else None) == (holder.token if holder else None):
                try:
                    self.loc.fs.delete_file(self.path)
                except FileNotFoundError:
                    pass

    # -- ownership ---------------------------------------------------------------------
    def holder(self) -> LockInfo | None:
        try:
            return LockInfo.model_validate(json.loads(read_bytes(self.loc, self.path)))
        except (FileNotFoundError, OSError, ValueError):
            return None

    def _start_heartbeat(self, info: LockInfo) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                holder = self.holder()
                if holder is None or holder.token != self.token:
                    self.lost = True
                    return
                info.heartbeat_at = time.time()
                try:
                    write_bytes(self.loc, self.path, info.model_dump_json().encode())
                except OSError as exc:
                    # A full disk, a storage hiccup: the old heartbeat stays readable (the
                    # write replaces the file whole); the run's own writes report the cause.
                    log.warning("could not refresh the lock of %s: %s", self.loc.uri, exc)

        self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self.holder()
        if holder is not None and holder.token == self.token:
            self.loc.fs.delete_file(self.path)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holds_lock(loc: Location, token: str) -> bool:
    """Fencing check for workers: is `token` still the run's lock holder?"""
    try:
        return json.loads(read_bytes(loc, loc.path(LOCK_NAME))).get("token") == token
    except (FileNotFoundError, OSError, ValueError):
        return False
