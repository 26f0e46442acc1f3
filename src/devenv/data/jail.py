"""The launcher of data servers: run a server (or initdb) as the unprivileged data user.

Run as a script (`python -I jail.py ...`, stdlib and ctypes only, no shell), as root it:
creates a private mount namespace, mounts a small tmpfs on JAIL (a root-owned folder that
every user can traverse), bind-mounts the service's data folder there (`--bind`) and,
read-only, whatever tools the data user could not reach (`--ro-bind`), then drops to the
data user (no supplementary groups, no new privileges) and executes the server, whose
argv names the data by its path under JAIL. No other process sees these mounts, so no
folder above the data needs to be traversable: `.devenv/` stays owner-only.

Not root: no namespace and no user change (the server runs as the invoking user). Always:
umask 077, a minimal environment, and `--stdin FILE` opened (as the caller) on fd 0, so a
configuration holding secrets never appears in an argv or in a file the server can read.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import stat
import sys
import time
from typing import Any

JAIL = "/run/devenv"
DATA = f"{JAIL}/data"  # where --bind mounts the data folder, as the server sees it
TOOLS = f"{JAIL}/tools"  # where --ro-bind mounts tools the data user cannot reach

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
# locale, and the marks by which devenv finds whatever a server leaves (not secrets)
KEEP_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "DEVENV_ENGINE",
            "DEVENV_INSTANCE", "DEVENV_PROJECT")


class JailError(Exception):
    pass


def _libc() -> Any:
    import ctypes  # (here: devenv imports this module for its constants)

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        raise JailError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _mount(libc: Any, source: str | None, target: str, fstype: str | None,
           flags: int, data: str | None = None) -> None:
    import ctypes

    enc = [None if s is None else os.fsencode(s) for s in (source, target, fstype, data)]
    _check(libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]),
           f"mount {source or ''} on {target}")


def _bind(libc: Any, source: str, target: str, flags: int) -> None:
    st = os.stat(source)  # follows a link: what is mounted is the folder itself
    if not stat.S_ISDIR(st.st_mode):
        raise JailError(f"{source} is not a folder")
    os.makedirs(target, mode=0o755, exist_ok=True)
    _mount(libc, source, target, None, MS_BIND)
    _mount(libc, None, target, None, MS_REMOUNT | MS_BIND | flags)


def _jail_root() -> None:
    """The mount point: a real folder owned by root, no link (made once, then reused)."""
    os.makedirs(os.path.dirname(JAIL), mode=0o755, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(JAIL, 0o755)
    st = os.lstat(JAIL)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise JailError(f"{JAIL} must be a folder owned by root, writable only by root")


def confine(user: str, binds: list[tuple[str, str]], ro_binds: list[tuple[str, str]]) -> None:
    """As root: the private mounts, then become `user` for good."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise JailError(f"no user {user}") from None
    if entry.pw_uid == 0:
        raise JailError(f"{user} is root")
    libc = _libc()
    _jail_root()
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks out
    _mount(libc, "tmpfs", JAIL, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           "mode=0755,size=64k")
    for source, target in binds:
        _bind(libc, source, target, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for source, target in ro_binds:
        _bind(libc, source, target, MS_RDONLY | MS_NOSUID | MS_NODEV)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getresuid() != (entry.pw_uid,) * 3 or os.getresgid() != (entry.pw_gid,) * 3:
        raise JailError("could not drop root")
    os.environ.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)


def remove_empty_lock(path: str) -> bool:
    """Remove `path` (as the server's user, never following a link) when it is an empty file
    and still is a moment later: PostgreSQL creates postmaster.pid, then writes it, and
    refuses to start on an empty one ("lock file is empty"), which a kill -9 in between
    leaves. (The engine runs one server on a data folder at a time; the second look keeps
    clear of a server starting anyway.) Whether it was removed."""
    try:
        first = os.lstat(path)
        if not stat.S_ISREG(first.st_mode) or first.st_size:
            return False
        time.sleep(0.1)
        again = os.lstat(path)
        if again.st_size or (again.st_ino, again.st_dev) != (first.st_ino, first.st_dev):
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    print(f"devenv: removed {os.path.basename(path)}, left empty by a server killed as it "
          "started", file=sys.stderr, flush=True)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="devenv-jail")
    parser.add_argument("--user", help="run as this user (as root only)")
    parser.add_argument("--bind", nargs=2, action="append", default=[],
                        metavar=("SOURCE", "TARGET"))
    parser.add_argument("--ro-bind", nargs=2, action="append", default=[],
                        metavar=("SOURCE", "TARGET"))
    parser.add_argument("--stdin", help="a file to give the server on its standard input")
    parser.add_argument("--cwd", help="the folder to start in (default: the first --bind)")
    parser.add_argument("--stale-lock", help="a lock file (as the server sees it) to remove "
                        "when it is empty: what a server killed as it starts leaves")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    try:
        for _, target in args.bind + args.ro_bind:
            if not target.startswith(JAIL + "/") or "/.." in target:
                raise JailError(f"mount targets must be under {JAIL}: {target}")
        if args.stdin:
            fd = os.open(args.stdin, os.O_RDONLY | os.O_NOFOLLOW)
            os.dup2(fd, 0)
            os.close(fd)
        keep = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
        os.environ.clear()
        os.environ.update(keep, PATH="/usr/local/bin:/usr/bin:/bin")
        if args.user:
            confine(args.user, [tuple(b) for b in args.bind],
                    [tuple(b) for b in args.ro_bind])
        elif args.bind or args.ro_bind:
            raise JailError("mounts need --user")
        cwd = args.cwd or (args.bind[0][1] if args.bind else "/")
        os.chdir(cwd)
        if args.stale_lock:
            remove_empty_lock(args.stale_lock)
        os.umask(0o077)  # what the server creates is its own only (after the mount points)
        os.execv(command[0], command)
    except (JailError, OSError) as exc:
        print(f"devenv: cannot start {os.path.basename(command[0])}: {exc}", file=sys.stderr,
              flush=True)
        return 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
