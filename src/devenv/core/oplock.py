"""The project's operation lock: `flock` on `.devenv/run/operation.lock` (owner-only).

Every command that changes the environment holds it SHARED for its whole run (cli/main.py):
such commands never wait on each other. A `migrate --confirm` is run by the engine, which
holds it EXCLUSIVE for the whole migration (engine/app.py), whatever becomes of the CLI that
asked: so a command that changes state refuses while a migration runs (`Busy`), and a
migration refuses while such a command runs (`Running`, naming it). The CLI of `migrate`
takes it exclusive for a moment first, to refuse before it starts anything.

A lock is held by an open descriptor that no child inherits (O_CLOEXEC; devenv starts
processes with close_fds): when the holder exits, however it ends (kill -9 too), the kernel
releases it, so a lock is never stale. The exclusive holder writes its name into the file
(pid, start time, command) for the message; what it says counts only while it holds it.

devenv may run as root in a project another user controls, so the folders are opened one by
one without following links, must be real folders of devenv's user, and the file must be a
regular file of that user (a FIFO there would make the open block; a link, write elsewhere).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from devenv.core.errors import DevenvError
from devenv.core.paths import PRIVATE_DIR, PRIVATE_FILE, StateDir

NAME = "operation.lock"
TAKE_TIMEOUT = 1.0  # how long an exclusive taker retries past a command that ends meanwhile
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Busy(DevenvError):
    """A migration holds the project: what, since when, and what to do."""

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


class Running(DevenvError):
    """Commands that change the environment hold the project: a migration waits for them."""

    def __init__(self, holders: list[str]):
        super().__init__("another devenv command is running: "
                         + (", ".join(holders) or "one that changes this environment")
                         + "; wait for it to finish, then migrate",
                         hint="`devenv audit` lists the commands run here")
        self.holders = holders


def path(root: Path) -> Path:
    return StateDir(root).run / NAME


def _unsafe(where: Path, what: str) -> DevenvError:
    return DevenvError(f"refusing to use {where}: {what}; devenv keeps its operation lock "
                       "only in a folder and a file of its own user",
                       hint=f"remove {where} (with devenv stopped), or run devenv as the "
                       "user who owns the project")


def _folder(parent: int, name: str, where: Path) -> int:
    """`name` in the folder `parent`, opened without following a link (made owner-only when
    missing): a real folder of this user, made owner-only."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, PRIVATE_DIR, dir_fd=parent)
    try:
        fd = os.open(name, _DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _unsafe(where, "it is a symbolic link or not a folder") from None
        raise
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        os.close(fd)
        raise _unsafe(where, f"it belongs to uid {info.st_uid}, not to devenv's user "
                      f"(uid {os.geteuid()})")
    if stat.S_IMODE(info.st_mode) != PRIVATE_DIR:
        os.fchmod(fd, PRIVATE_DIR)
    return fd


def _open(root: Path) -> int:
    """The lock file's descriptor (created owner-only), its folders and itself checked."""
    file = path(root)
    base = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        state = _folder(base, file.parent.parent.name, file.parent.parent)
    finally:
        os.close(base)
    try:
        run = _folder(state, file.parent.name, file.parent)
    finally:
        os.close(state)
    try:
        fd = os.open(NAME, _FILE, PRIVATE_FILE, dir_fd=run)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise _unsafe(file, "it is not a regular file") from None
        raise
    finally:
        os.close(run)
    info = os.fstat(fd)
    problem = ("it is not a regular file" if not stat.S_ISREG(info.st_mode) else
               f"it belongs to uid {info.st_uid}, not to devenv's user (uid {os.geteuid()})"
               if info.st_uid != os.geteuid() else "")
    if problem:
        os.close(fd)
        raise _unsafe(file, problem)
    if stat.S_IMODE(info.st_mode) != PRIVATE_FILE:
        os.fchmod(fd, PRIVATE_FILE)
    return fd


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


def holders(fd: int) -> tuple[bool, list[str]]:
    """Who holds the file now, from /proc/locks: whether one holds it exclusively, and the
    commands holding it ("devenv up (pid 123)"), as far as the kernel says."""
    inode = os.fstat(fd).st_ino
    exclusive, pids = False, []
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False, []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[5].rsplit(":", 1)[-1] != str(
                inode):
            continue  # (a waiter's line has "->" in fields[1])
        exclusive = exclusive or fields[3] == "WRITE"
        if fields[4].isdigit() and int(fields[4]) != os.getpid():
            pids.append(int(fields[4]))
    return exclusive, [_command(pid) for pid in dict.fromkeys(pids)]


def _command(pid: int) -> str:
    """`devenv up --attach (pid 123)`: what the process runs, as far as it can be read."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return f"pid {pid}"
    words = [w for w in argv.split("\0") if w]
    for i, word in enumerate(words):
        if os.path.basename(word) == "devenv":
            shown = " ".join(["devenv", *words[i + 1:]])
        elif word == "-m" and words[i + 1:i + 2] and words[i + 1].startswith("devenv"):
            shown = " ".join([words[i + 1].replace(".", " "), *words[i + 2:]])
        else:
            continue
        return f"{shown[:60]}{'…' if len(shown) > 60 else ''} (pid {pid})"
    return f"pid {pid}"


@contextlib.contextmanager
def shared(root: Path) -> Iterator[None]:
    """The project held by a command that changes it, for the block: never waits; `Busy`
    while a migration holds it."""
    fd = _open(root)
    try:
        if _busy(fd, fcntl.LOCK_SH):
            raise Busy(_holder(fd))
        yield
    finally:
        os.close(fd)


def _exclusive(root: Path) -> int:
    """The file's descriptor, locked exclusively (retried for TAKE_TIMEOUT); `Busy` while
    a migration holds it, `Running` while commands that change the environment do."""
    fd = _open(root)
    try:
        deadline = time.monotonic() + TAKE_TIMEOUT
        while _busy(fd, fcntl.LOCK_EX):
            if time.monotonic() >= deadline:
                exclusive, names = holders(fd)
                holder = _holder(fd)
                if exclusive or (holder and not names):
                    raise Busy(holder)
                raise Running(names)
            time.sleep(0.02)
    except BaseException:
        os.close(fd)
        raise
    return fd


def free(root: Path) -> None:
    """Nothing holds the project now (`Busy`, `Running` otherwise): a migration may start."""
    os.close(_exclusive(root))


class Held:
    """The project held exclusively, named in the file, until `release`."""

    def __init__(self, root: Path, command: str):
        self.fd = _exclusive(root)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps({"pid": os.getpid(), "started": time.time(),
                                       "command": command}).encode(), 0)

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            os.ftruncate(self.fd, 0)  # (before the kernel lets the next one in)
        finally:
            os.close(self.fd)
            self.fd = -1


@contextlib.contextmanager
def hold(root: Path, command: str) -> Iterator[None]:
    """The project held exclusively by this process for the block."""
    held = Held(root, command)
    try:
        yield
    finally:
        held.release()
