"""The project's operation lock: `devenv migrate --confirm` holds it for its whole run, and
every command that changes the environment refuses while it is held.

It is `flock` on `.devenv/run/operation.lock` (owner-only), held by an open descriptor
that children never inherit: when the holder exits, however it ends (kill -9 too), the
kernel releases it, so a lock is never stale. The file names its holder (pid, start time,
command) for the message; what it says counts only while the lock is held.

A command that changes state only probes (a shared lock taken and given back at once), so
commands never wait on each other; the holder's exclusive attempt retries for a moment,
so that such a probe never makes it fail.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from devenv.core.errors import DevenvError
from devenv.core.paths import PRIVATE_FILE, StateDir, private_dir

NAME = "operation.lock"
TAKE_TIMEOUT = 1.0  # how long the holder retries past a probe that holds it for a moment


class Busy(DevenvError):
    """An operation holds the project: what, since when, and what to do."""

    def __init__(self, holder: dict[str, object]):
        command = str(holder.get("command") or "an operation")
        pid = holder.get("pid")
        started = holder.get("started")
        when = (datetime.fromtimestamp(float(started)).strftime("%H:%M:%S")
                if isinstance(started, int | float) else None)
        said = ", ".join(part for part in (f"pid {pid}" if pid else "",
                                           f"started {when}" if when else "") if part)
        article = "an" if command[:1] in "aeiou" else "a"
        super().__init__(f"{article} {command} is in progress"
                         + (f" ({said})" if said else "") + "; wait for it to finish",
                         hint="read-only commands (status, logs, audit) work meanwhile")
        self.holder = holder


def path(root: Path) -> Path:
    return StateDir(root).run / NAME


def _busy(fd: int, lock: int) -> bool:
    """Try `lock` without waiting: True when another holds the file."""
    try:
        fcntl.flock(fd, lock | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    return False


def _holder(fd: int) -> dict[str, object]:
    try:
        found = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def check(root: Path) -> None:
    """Busy when an operation holds the project (no lock file: none ever did)."""
    try:
        fd = os.open(path(root), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if _busy(fd, fcntl.LOCK_SH):
            raise Busy(_holder(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(root: Path, command: str) -> Iterator[None]:
    """The project held by this process for the block (Busy when another holds it)."""
    file = path(root)
    private_dir(file.parent)
    fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE_FILE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, PRIVATE_FILE)
        deadline = time.monotonic() + TAKE_TIMEOUT
        while _busy(fd, fcntl.LOCK_EX):
            if time.monotonic() >= deadline:  # held for longer than a probe holds it
                raise Busy(_holder(fd))
            time.sleep(0.02)
        pid = os.getpid()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": pid, "started": time.time(),
                                  "command": command}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # (before the kernel lets the next one in)
    finally:
        os.close(fd)
