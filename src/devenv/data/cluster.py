"""What a data kind needs when its server is the cluster's StatefulSet (the kubernetes runtime).

The one server of a data service is the pod `<service>-0` of its StatefulSet (the official
image, its data in a PersistentVolumeClaim): the cluster's services reach it by its Service's
name, devenv's local side through the engine's address and a port-forward. devenv starts no
server of its own. Its data commands run in that pod, through the API's exec stream
(`sh -c SCRIPT`, stdin and stdout as streams), as `data/container.py` does with `docker exec`:

- PostgreSQL: a snapshot is `pg_dump -Fc` of each database, out through stdout (one file per
  database, and `cluster.json` naming them). A restore streams each dump in (`head -c SIZE |
  pg_restore`: the exec's stdin has no end-of-file on the v4 channel protocol, so the byte
  count ends it) into a *staging* database (`devenv_restore_new_<i>`), then swaps them all in
  one transaction (renames: the live one becomes `devenv_restore_old_<i>`, then dropped). A
  failure before the swap leaves the live data untouched; the swap is all or nothing. Every
  database but the templates is in a snapshot (`postgres` too: a service named `postgres`
  keeps its data there), so every script connects to `template1`.
- Redis: a snapshot is one Lua script (atomic: a consistent copy) returning every key of
  database 0 with its TTL and `DUMP` payload, hex-encoded, one per line, and last the
  `DBSIZE`: kept only when every line is a key's and they number that many (`redis-cli -e`:
  an error reply, `LOADING` or `NOAUTH`, is a failure, never data). A restore pipes the
  `RESTORE` commands (`redis-cli --pipe`) into database 15 (staging), with a marker key last,
  then one script swaps it in (`SWAPDB 0 15`, only while the marker is there: idempotent) and
  database 15 is flushed.

Secrets never appear on an argv: the scripts read the password from the pod's own
environment (its Secret: `$POSTGRES_PASSWORD`, `$REDIS_PASSWORD`) into PGPASSWORD /
REDISCLI_AUTH. Where the cluster is (context, namespace) is read from the runtime's record
`.devenv/run/kubernetes.json`, written before any data service starts.

Crash safety: `cluster-restore.json` beside the service's local record says a restore staged
something (and when the swap could not reach the cluster, that it is still due); the next
healthy start (`provision`) finishes the swap and drops the leftovers.

This module is the data layer's one edge into `devenv.runtime` (the API client and its exec
stream), imported when used; verified only against tests/fake_kube_api.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from devenv.config.model import HealthCheck
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError
from devenv.core.paths import PRIVATE_FILE, StateDir, private_dir, private_opener
from devenv.data.base import DataService, Server

MARKER = "kubernetes.json"  # in .devenv/run/ (as devenv.runtime.kube_runtime's `_marker`)
PENDING = "cluster-restore.json"
EXEC_TIMEOUT = 3600.0  # a dump or a restore: as long as the data needs
SHORT = 120.0  # a listing, a swap, a clean-up, a version: never long
CHUNK = 1 << 16
FORMAT = "cluster.json"  # in a snapshot's folder: what it holds


class Unreachable(DevenvError):
    """No cluster is recorded for the project (its engine stopped), or it does not answer."""


def pod(ds: DataService[Any]) -> str:
    return f"{ds.name}-0"


def where(ds: DataService[Any]) -> tuple[str | None, str]:
    """(kubeconfig context, namespace) of the project's cluster, as its runtime recorded."""
    record = StateDir(Path(ds.project)).run / MARKER
    try:
        found = json.loads(record.read_text())
        return found.get("context"), str(found["namespace"])
    except (OSError, ValueError, KeyError) as exc:
        raise Unreachable(f"{ds.name}: no cluster is recorded for this project ({record})",
                          hint=f"start it: devenv up --services {ds.name}") from exc


async def run(ds: DataService[Any], script: str, what: str, *,
              feed: Path | None = None, out: IO[bytes] | None = None,
              timeout: float = EXEC_TIMEOUT) -> str:
    """`sh -c script` in the service's pod; `feed`'s bytes on its stdin (the script reads
    exactly its size: `head -c $DEVENV_SIZE`), its stdout into `out` (else returned). A
    failure says what, with its last error lines."""
    import aiohttp

    from devenv.runtime.kube_stream import Link, exec_in
    from devenv.runtime.kubernetes import KubeApi

    context, namespace = where(ds)
    try:
        api = await asyncio.to_thread(KubeApi.connect, context)
    except DevenvError as exc:
        raise Unreachable(exc.message, hint=exc.hint) from exc
    link = Link.of(api.client.configuration)
    got, errors = bytearray(), bytearray()

    def on(channel: int, data: bytes) -> None:
        if channel == 1:
            if out is not None:
                out.write(data)
            else:
                got.extend(data)
        else:
            errors.extend(data)
            del errors[:-8192]

    stdin: asyncio.Queue[bytes | None] | None = None
    feeder = None
    if feed is not None:
        script = f"DEVENV_SIZE={feed.stat().st_size}; " + script
        stdin = asyncio.Queue(maxsize=16)
        feeder = asyncio.create_task(_feed(feed, stdin))
    argv = ("sh", "-c", script)
    try:
        async with aiohttp.ClientSession() as session:
            code = await asyncio.wait_for(exec_in(session, link, namespace, pod(ds), ds.name,
                                                  argv, on, stdin=stdin), timeout)
    except TimeoutError:
        raise DevenvError(f"{ds.name}: {what} did not finish within {timeout:g}s") from None
    except Unreachable:
        raise
    except DevenvError as exc:
        if "cannot reach" in exc.message:
            raise Unreachable(f"{ds.name}: {exc.message}") from exc
        raise DevenvError(f"{ds.name}: {what} failed in pod {pod(ds)}: {exc.message}") from exc
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
        with contextlib.suppress(Exception):
            api.client.close()
    if code != 0:
        raise DevenvError(f"{ds.name}: {what} failed in pod {pod(ds)} (exit code {code})",
                          details=errors.decode(errors="replace").strip().splitlines()[-10:])
    return got.decode(errors="replace")


async def _feed(path: Path, queue: asyncio.Queue[bytes | None]) -> None:
    with open(path, "rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            await queue.put(chunk)
    await queue.put(None)


def _sync(job: Callable[[], Any]) -> Any:
    """A coroutine run to its end on a loop of its own (stage, swap and drop are
    synchronous: called from a worker thread, or from the engine's loop for the swap,
    which then waits for it as for the local runtime's renames)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(job())
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(job())).result()


# ---- the record of a restore in progress (beside the service's local record)


def _pending(ds: DataService[Any]) -> Path:
    return ds.folder / PENDING


def _read_pending(ds: DataService[Any]) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads(_pending(ds).read_text())
        return found
    except (OSError, ValueError):
        return None


def _write_pending(ds: DataService[Any], **record: Any) -> None:
    private_dir(ds.folder)
    write_atomic(_pending(ds), json.dumps(record), mode=PRIVATE_FILE)


def prepare(ds: DataService[Any]) -> None:
    """Before a start: nothing runs here. A restore left unfinished (its swap could not reach
    the cluster, or its leftovers are not dropped yet): the next healthy start finishes it
    (`provision`)."""
    private_dir(ds.folder)
    if _pending(ds).exists():
        ds.unmark()


def _format(ds: DataService[Any], src: Path, kind: str) -> dict[str, Any]:
    try:
        found: dict[str, Any] = json.loads((src / FORMAT).read_text())
    except (OSError, ValueError):
        found = {}
    if found.get("kind") != kind:
        raise DevenvError(f"{ds.name}: this snapshot was not taken on a cluster (it holds a "
                          "copy of a local or container server's files)",
                          hint="restore it on the runtime it was taken on, then `devenv "
                          "snapshot save` there and load the data into the cluster from a "
                          "dataset")
    return found


def refuse_here(ds: DataService[Any], src: Path) -> None:
    """A snapshot taken on a cluster cannot be restored into a local or container server
    (it holds dumps made in the pod, not a server's files): said, before anything."""
    if (src / FORMAT).is_file():
        runtime = "local processes" if ds.image is None else "docker"
        raise DevenvError(f"{ds.name}: this snapshot was taken on the kubernetes runtime (a "
                          f"cluster's {ds.kind} pod); it cannot be restored on this runtime "
                          f"({runtime}); nothing was restored",
                          hint="restore it with `runtime: kubernetes`, or take a snapshot on "
                          "this runtime (or load a dataset) instead")


def _staging(ds: DataService[Any], job: Callable[[], Any]) -> None:
    """A restore's staging step; its failure says the live data was not touched."""
    try:
        job()
    except DevenvError as exc:
        raise DevenvError(f"{exc.message}; the live data of {ds.name} is unchanged (only a "
                          "staging copy was written, and it is dropped)", details=exc.details,
                          hint=exc.hint) from exc


def _swapping(ds: DataService[Any], job: Callable[[], Any]) -> None:
    """A restore's swap (one transaction, or one script); its failure says so."""
    try:
        job()
    except Unreachable:
        raise
    except DevenvError as exc:
        raise DevenvError(f"{exc.message}; the swap is all or nothing, so {ds.name} still "
                          "holds its data from before the restore", details=exc.details,
                          hint="the staged copy is kept; the engine's next start finishes "
                          "the restore (or run `devenv snapshot restore` again)") from exc


def _version_file(dest: Path, kind: str, **more: Any) -> None:
    write_atomic(dest / FORMAT, json.dumps({"kind": kind, **more}), mode=PRIVATE_FILE)


def _save(dest: Path, name: str) -> IO[bytes]:
    return open(dest / name, "wb", opener=private_opener)


# ---- PostgreSQL

# the pod's own Secret gives the password; the image's user is its superuser (local socket)
PG = 'export PGUSER="${POSTGRES_USER:-postgres}" PGPASSWORD="${POSTGRES_PASSWORD:-}"; '
# every script connects to template1, never to a database it may drop or rename (a data
# service named `postgres` has a database `postgres`, its default)
MAINTENANCE = "template1"
# what a snapshot holds: every database but the templates and a restore's leftovers
LISTED = ("SELECT datname FROM pg_database WHERE NOT datistemplate AND datname NOT LIKE "
          "'devenv\\_restore\\_%' ORDER BY 1")
NEW, OLD = "devenv_restore_new_{}", "devenv_restore_old_{}"
SWAP_TRIES = 50  # the swap waits for the databases' sessions to end: 50 x 0.2 s


def _ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _psql(*commands: str, db: str = MAINTENANCE) -> str:
    """psql running each of `commands` on its own (CREATE DATABASE cannot share one)."""
    args = " ".join(f"-c {shlex.quote(c)}" for c in commands)
    return f"{PG}psql -X -q -v ON_ERROR_STOP=1 -At -d {shlex.quote(db)} {args}"


class PostgresInCluster:
    def server(self, ds: DataService[Any]) -> Server:
        """Nothing runs here: the health check is pg_isready in the pod (as its probe)."""
        ready = ["pg_isready", "-q", "-U", ds.settings.user, "-d",
                 ds.settings.targets(ds.name)[0]]
        return Server(command=(), health=HealthCheck(command=ready))

    async def snapshot(self, ds: DataService[Any], dest: Path) -> str:
        """`pg_dump -Fc` of every database but the system ones, each streamed to a file."""
        private_dir(dest)
        listed = await run(ds, _psql(LISTED), "listing the databases", timeout=SHORT)
        databases = [line for line in listed.splitlines() if line]
        for i, db in enumerate(databases):
            with _save(dest, f"{i}.dump") as fh:
                await run(ds, f"{PG}exec pg_dump -Fc -d {shlex.quote(db)}", f"pg_dump of {db}",
                          out=fh)
                fh.flush()
                os.fsync(fh.fileno())
        version = (await run(ds, _psql("SHOW server_version"), "its version",
                             timeout=SHORT)).strip()
        _version_file(dest, "postgres", databases=databases)
        return version.split()[0] if version else "?"

    def stage_restore(self, ds: DataService[Any], src: Path) -> None:
        """Each database's dump restored into a staging database; nothing live touched."""
        databases = _format(ds, src, "postgres").get("databases", [])
        if not isinstance(databases, list) or not all(isinstance(d, str) for d in databases):
            raise DevenvError(f"{ds.name}: the snapshot's {FORMAT} does not list its "
                              "databases; nothing was restored")
        _write_pending(ds, kind="postgres", phase="staging", databases=databases)
        news = [NEW.format(i) for i in range(len(databases))]

        async def stage() -> None:  # (a leftover replaced copy would block the swap)
            await _pg_drop(ds, len(databases), old=True)
            for i, new in enumerate(news):
                await run(ds, _psql(f"CREATE DATABASE {_ident(new)}"),
                          f"restore (staging database for {databases[i]})")
                await run(ds, f"{PG}head -c \"$DEVENV_SIZE\" | pg_restore --exit-on-error "
                          f"--no-password -d {shlex.quote(new)}",
                          f"restore of {databases[i]} (pg_restore)", feed=src / f"{i}.dump")

        _staging(ds, lambda: _sync(stage))
        _write_pending(ds, kind="postgres", phase="staged", databases=databases)

    def swap_restore(self, ds: DataService[Any]) -> bool:
        record = _read_pending(ds)
        if record is None or record.get("phase") == "staging":
            return False
        try:
            _swapping(ds, lambda: _sync(lambda: _pg_swap(ds, list(record.get("databases",
                                                                              [])))))
        except Unreachable:  # (a restore a crash cut: the next healthy start finishes it)
            _write_pending(ds, **{**record, "phase": "swap"})
            ds.unmark()
            return True
        _write_pending(ds, **{**record, "phase": "swapped"})
        return True

    def drop_restore(self, ds: DataService[Any]) -> None:
        record = _read_pending(ds)
        if record is None or record.get("phase") == "swap":
            return
        try:
            _sync(lambda: _pg_drop(ds, len(record.get("databases", [])), old=True))
        except Unreachable:
            return  # (kept: dropped at the next healthy start)
        _pending(ds).unlink(missing_ok=True)

    async def provision(self, ds: DataService[Any]) -> None:
        """The image made the roles and databases; a restore left unfinished is finished."""
        record = _read_pending(ds)
        if record is None:
            return
        databases = list(record.get("databases", []))
        if record.get("phase") == "swap":
            await _pg_swap(ds, databases)
        await _pg_drop(ds, len(databases), old=True)
        _pending(ds).unlink(missing_ok=True)

    def missing(self, ds: DataService[Any], src: Path) -> list[str]:
        """The service's declared databases that its snapshot folder `src` lacks."""
        held = set(_format(ds, src, "postgres").get("databases", []))
        return [db for db in ds.settings.targets(ds.name) if db not in held]

    async def wipe(self, ds: DataService[Any]) -> None:
        """`data reset`: every database dropped; the service's own made again, empty, owned
        by its user (the roles the image made stay)."""
        listed = await run(ds, _psql("SELECT datname FROM pg_database WHERE NOT "
                                     "datistemplate ORDER BY 1"), "listing the databases",
                           timeout=SHORT)
        await run(ds, _psql(*wipe_sql(listed.splitlines(), ds.settings.targets(ds.name),
                                      ds.settings.user)), "data reset")


def wipe_sql(listed: Iterable[str], targets: list[str], user: str) -> list[str]:
    """`data reset`'s statements (run from template1): every database listed dropped but
    `postgres` (the maintenance database) unless the service's own, then its own made."""
    drops = [f"DROP DATABASE IF EXISTS {_ident(db)} WITH (FORCE)" for db in listed
             if db and (db != "postgres" or db in targets)]
    return drops + [f"CREATE DATABASE {_ident(db)} OWNER {_ident(user)}" for db in targets]


async def _pg_drop(ds: DataService[Any], count: int, old: bool) -> None:
    """The staging databases (and with `old`, the replaced ones) dropped."""
    names = [NEW.format(i) for i in range(count)] + \
        ([OLD.format(i) for i in range(count)] if old else [])
    if names:
        await run(ds, _psql(*(f"DROP DATABASE IF EXISTS {_ident(n)} WITH (FORCE)"
                              for n in names)), "restore (clean up)", timeout=SHORT)


async def _pg_swap(ds: DataService[Any], databases: list[str]) -> None:
    """In one transaction, each staged database takes its live one's name (the live one
    kept aside as OLD); only where a staged one exists, so running it again does nothing.
    The databases' sessions (the cluster's services) are ended first; tried again while one
    comes back."""
    steps = []
    for i, db in enumerate(databases):
        new, old = NEW.format(i), OLD.format(i)
        steps.append(
            f"IF EXISTS (SELECT FROM pg_database WHERE datname = {_lit(new)}) THEN "
            f"IF EXISTS (SELECT FROM pg_database WHERE datname = {_lit(db)}) THEN "
            f"EXECUTE {_lit(f'ALTER DATABASE {_ident(db)} RENAME TO {_ident(old)}')}; "
            f"END IF; "
            f"EXECUTE {_lit(f'ALTER DATABASE {_ident(new)} RENAME TO {_ident(db)}')}; "
            f"END IF;")
    if not steps:
        return
    names = ", ".join(_lit(n) for i, db in enumerate(databases)
                      for n in (db, NEW.format(i)))
    kick = (f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname "
            f"IN ({names}) AND pid <> pg_backend_pid()")
    swap = "DO $devenv$ BEGIN " + " ".join(steps) + " END $devenv$"
    once = _psql(kick, swap)
    script = (f"n=0; while [ $n -lt {SWAP_TRIES} ]; do if {once} >/dev/null 2>/tmp/.devenv-swap"
              f"; then exit 0; fi; n=$((n+1)); sleep 0.2; done; cat /tmp/.devenv-swap >&2; "
              "exit 1")
    await run(ds, script, "restore (swap)", timeout=SHORT)


# ---- Redis

# the pod's own Secret gives the password (none: no AUTH)
RD = ('if [ -n "${REDIS_PASSWORD:-}" ]; then export REDISCLI_AUTH="$REDIS_PASSWORD"; fi; ')
STAGING_DB = 15
STAGED_KEY = "__devenv_restore_staged__"
HEX = ("local function hex(s) return (s:gsub('.', function(c) "
       "return string.format('%02x', string.byte(c)) end)) end ")
# (each key once; DBSIZE last, read in the same script, after SCAN reclaimed expired keys)
DUMP_ALL = (HEX + "local out = {} local seen = {} local cursor = '0' repeat "
            "local r = redis.call('SCAN', cursor, 'COUNT', 1000) cursor = r[1] "
            "for _, k in ipairs(r[2]) do if not seen[k] then seen[k] = true "
            "local d = redis.call('DUMP', k) "
            "if d then out[#out+1] = hex(k) out[#out+1] = tostring(redis.call('PTTL', k)) "
            "out[#out+1] = hex(d) end end end until cursor == '0' "
            "out[#out+1] = 'dbsize ' .. redis.call('DBSIZE') return out")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_TTL = re.compile(r"-1|[0-9]+")
SWAP = (f"redis.call('SELECT', {STAGING_DB}) if redis.call('EXISTS', KEYS[1]) == 1 then "
        "redis.call('DEL', KEYS[1]) redis.call('SWAPDB', 0, "
        f"{STAGING_DB}) return 1 end return 0")


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _cli(*args: str) -> str:
    """redis-cli running one command; `-e`: an error reply (LOADING, NOAUTH, BUSY, …) is
    a failure, not an answer."""
    return f"{RD}redis-cli --no-auth-warning -e --raw " + " ".join(shlex.quote(a)
                                                                   for a in args)


def keys(lines: Iterable[str]) -> Iterator[tuple[bytes, int, bytes]]:
    """keys.hex's keys (name, TTL in ms or -1, DUMP payload); DevenvError (saying the line)
    unless each is three well-formed lines."""
    group: list[str] = []
    n = 0
    for n, line in enumerate(lines, 1):
        group.append(line.rstrip("\r\n"))
        if len(group) < 3:
            continue
        name, ttl, payload = group
        group = []
        if not (_HEX.fullmatch(name) and _TTL.fullmatch(ttl) and payload
                and _HEX.fullmatch(payload)):
            at, bad = next((i, t) for i, (t, ok) in enumerate((
                (name, _HEX.fullmatch(name)), (ttl, _TTL.fullmatch(ttl)),
                (payload, payload and _HEX.fullmatch(payload)))) if not ok)
            raise DevenvError(f"line {n - 2 + at} is not part of a key: {bad[:80]!r}")
        yield bytes.fromhex(name), int(ttl), bytes.fromhex(payload)
    if group:
        raise DevenvError(f"it is cut short after line {n} (a key is three lines)")


def checked_dump(raw: Iterable[str], into: IO[str]) -> int:
    """DUMP_ALL's answer checked and copied into keys.hex (its last line, the DBSIZE, left
    out): the number of keys; DevenvError unless every line is a key's and all are there."""
    last: list[str] = []

    def body() -> Iterator[str]:
        before = None
        for line in raw:
            if before is not None:
                into.write(before)
                yield before
            before = line
        last.append(before or "")

    count = sum(1 for _ in keys(body()))
    found = last[0].strip() if last else ""
    size = found.removeprefix("dbsize ")
    if not found.startswith("dbsize ") or not size.isdigit():
        raise DevenvError(f"it did not end with the key count but {found[:80]!r}")
    if int(size) != count:
        raise DevenvError(f"it holds {count} keys where the database holds {size}")
    return count


class RedisInCluster:
    def server(self, ds: DataService[Any]) -> Server:
        """Nothing runs here: the health check is `redis-cli ping` in the pod."""
        return Server(command=(), health=HealthCheck(command=[
            "sh", "-c", f"{RD}redis-cli --no-auth-warning ping | grep -q PONG"]))

    async def snapshot(self, ds: DataService[Any], dest: Path) -> str:
        """Every key of database 0 (one script: a consistent copy), hex, three lines a key:
        name, TTL in ms (-1: none), DUMP payload."""
        private_dir(dest)
        raw = dest / ".dump"
        try:
            with _save(dest, ".dump") as fh:
                await run(ds, _cli("EVAL", DUMP_ALL, "0"), "snapshot (DUMP)", out=fh)
            with open(raw, encoding="latin-1", newline="") as src, \
                    open(dest / "keys.hex", "w", encoding="latin-1", newline="",
                         opener=private_opener) as fh:
                try:
                    count = checked_dump(src, fh)
                except DevenvError as exc:
                    raise DevenvError(f"{ds.name}: snapshot (DUMP) answered something else "
                                      f"than its keys: {exc.message}",
                                      hint="try again once the server is ready (`devenv "
                                      "status`)") from exc
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            raw.unlink(missing_ok=True)
        info = await run(ds, _cli("INFO", "server"), "its version", timeout=SHORT)
        version = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                        if ln.startswith("redis_version:")), "?")
        _version_file(dest, "redis", keys=count)
        return version

    def stage_restore(self, ds: DataService[Any], src: Path) -> None:
        """The keys RESTOREd into the staging database (emptied first), its marker last."""
        _format(ds, src, "redis")
        _write_pending(ds, kind="redis", phase="staging")
        pipe = ds.folder / "restore.resp"
        try:
            with open(pipe, "wb", opener=private_opener) as fh, \
                    open(src / "keys.hex", encoding="latin-1", newline="") as dump:
                fh.write(_resp(b"SELECT", str(STAGING_DB).encode()) + _resp(b"FLUSHDB"))
                try:
                    for name, ttl, payload in keys(dump):
                        fh.write(_resp(b"RESTORE", name, str(max(ttl, 0)).encode(), payload,
                                       b"REPLACE"))
                except DevenvError as exc:
                    raise DevenvError(f"{ds.name}: the snapshot's keys.hex is damaged: "
                                      f"{exc.message}") from exc
                fh.write(_resp(b"SET", STAGED_KEY.encode(), b"1"))
            _staging(ds, lambda: _sync(lambda: run(
                ds, f"{RD}head -c \"$DEVENV_SIZE\" | redis-cli --no-auth-warning --pipe",
                "restore (RESTORE into staging)", feed=pipe)))
        finally:
            pipe.unlink(missing_ok=True)
        _write_pending(ds, kind="redis", phase="staged")

    def swap_restore(self, ds: DataService[Any]) -> bool:
        record = _read_pending(ds)
        if record is None or record.get("phase") == "staging":
            return False
        # (a swap tried before may have happened: then its marker is gone and it answers 0)
        again = bool(record.get("tried")) or record.get("phase") == "swap"
        _write_pending(ds, **{**record, "tried": True})
        try:
            _swapping(ds, lambda: _sync(lambda: _redis_swap(ds, again)))
        except Unreachable:
            _write_pending(ds, kind="redis", phase="swap")
            ds.unmark()
            return True
        _write_pending(ds, kind="redis", phase="swapped")
        return True

    def drop_restore(self, ds: DataService[Any]) -> None:
        record = _read_pending(ds)
        if record is None or record.get("phase") == "swap":
            return
        try:
            _sync(lambda: run(ds, _cli("-n", str(STAGING_DB), "FLUSHDB"),
                              "restore (clean up)", timeout=SHORT))
        except Unreachable:
            return
        _pending(ds).unlink(missing_ok=True)

    async def provision(self, ds: DataService[Any]) -> None:
        record = _read_pending(ds)
        if record is None:
            return
        if record.get("phase") == "swap":
            await _redis_swap(ds, again=True)
        await run(ds, _cli("-n", str(STAGING_DB), "FLUSHDB"), "restore (clean up)",
                  timeout=SHORT)
        _pending(ds).unlink(missing_ok=True)

    def missing(self, ds: DataService[Any], src: Path) -> list[str]:
        """What the snapshot folder `src` lacks of the service (its keys' file)."""
        _format(ds, src, "redis")
        return [] if (src / "keys.hex").is_file() else ["keys.hex"]

    async def wipe(self, ds: DataService[Any]) -> None:
        await run(ds, _cli("FLUSHALL"), "data reset", timeout=SHORT)


async def _redis_swap(ds: DataService[Any], again: bool) -> None:
    """The staged database swapped in; it must answer 1 (swapped), or 0 when a swap tried
    before may have done it."""
    said = (await run(ds, _cli("EVAL", SWAP, "1", STAGED_KEY), "restore (SWAPDB)",
                      timeout=SHORT)).strip()
    if said != "1" and not (again and said == "0"):
        raise DevenvError(f"{ds.name}: restore (SWAPDB) answered {said[:80]!r}, not 1: the "
                          f"staged copy in database {STAGING_DB} is not complete")


postgres = PostgresInCluster()
redis = RedisInCluster()
KINDS: dict[str, PostgresInCluster | RedisInCluster] = {"postgres": postgres, "redis": redis}


async def wipe(ds: DataService[Any]) -> None:
    """`data reset` of a service on a cluster: its server's data emptied in place."""
    await KINDS[ds.kind].wipe(ds)
