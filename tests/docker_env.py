"""A real Docker Engine for the docker-runtime tests, and a test image made without a registry.

`engine()` finds a Docker Engine that answers (DOCKER_HOST, this suite's own socket, the
default socket); else, as root, installs Debian's docker.io when dockerd is missing and
starts a dockerd of its own (its own data root and socket, so it never clashes with another);
else it says why not (the tests skip with that reason). `Engine.close()` stops what it
started.

`test_image(api)` is the image the tests run: no registry is reachable here, so it is a root
filesystem made from this machine's Python (the interpreter, its standard library and the
shared libraries they load, as `ldd` lists them), /bin/sh, and tests/fixtures/svc.py served
on 0.0.0.0 (`/app/serve.py`, the image's command), imported with `docker import`. Its tag is
a hash of what went in, so a later session reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
SOCKET = Path("/run/devenv-test-docker.sock")
DATA_ROOT = Path("/var/tmp/devenv-test-docker")  # images survive between sessions
EXEC_ROOT = Path("/run/devenv-test-docker")
START_TIMEOUT = 60.0
# what tries to start dockerd, in order, until one answers
VARIANTS: list[list[str]] = [[], ["--storage-driver=vfs"],
                             ["--storage-driver=vfs", "--iptables=false", "--ip-forward=false"]]
SERVE = """\
import os, sys
sys.path.insert(0, "/app")
import svc
server = svc.Server(("0.0.0.0", int(os.environ["PORT"])), svc.Handler)
print(f"{svc.NAME} listening on {server.server_port}", flush=True)
server.serve_forever()
"""


class Unavailable(Exception):
    """No Docker Engine can run here; the message says why."""


@dataclass
class Engine:
    host: str
    proc: subprocess.Popen[bytes] | None = None  # the dockerd we started, if we did

    def api(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.host, timeout=120).api

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # (dockerd stops its containers and its containerd)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


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
    candidates = [os.environ.get("DOCKER_HOST", ""), f"unix://{SOCKET}",
                  "unix:///var/run/docker.sock"]
    for host in filter(None, candidates):
        if _answers(host):
            return Engine(host)
    if os.geteuid() != 0:
        raise Unavailable("no Docker Engine answers (DOCKER_HOST, /var/run/docker.sock) and "
                          "the tests do not run as root, so they cannot start one")
    dockerd = shutil.which("dockerd") or _install()
    failures = []
    for extra in VARIANTS:
        proc, why = _start(dockerd, extra)
        if proc is not None:
            return Engine(f"unix://{SOCKET}", proc)
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
