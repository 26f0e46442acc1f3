"""What a data kind needs when its server runs as a container (the docker runtime).

The data lives in a named volume per service (`<project prefix>-<service>-data`), labelled
with the project and the service. The kinds do their work (initdb, snapshot tools, the
staging and swapping of a restore) inside containers of the service's own image: `exec` in
the running server's container, or a short-lived helper container with the volume mounted
(`helper`, no network). Through docker-py, as the docker runtime; the names and labels here
match `devenv.runtime.docker_spec` (the data layer does not import the runtime).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from devenv.core.errors import DevenvError

PROJECT_LABEL = "devenv.project"  # (as devenv.runtime.docker_spec)
SERVICE_LABEL = "devenv.service"
VOLUME_LABEL = "devenv.volume"  # on volumes: whose data it holds
REPLICA_LABEL = "devenv.replica"
ONEOFF_LABEL = "devenv.oneoff"  # a one-off command's container (the runtime's `run`)
HELPER_LABEL = "devenv.helper"  # a helper container (`helper`): the service it works for
MARKER = "docker.json"  # in .devenv/run/ (as devenv.runtime.docker's `_marker`)
API_TIMEOUT = 60
HELPER_TIMEOUT = 600.0
STREAM_TIMEOUT = 3600.0  # a snapshot's stream out of the container, at most

_client: Any = None
_lock = threading.Lock()


def volume_name(root: Path, service: str) -> str:
    """The service's data volume: per project (its folder's name and a digest of its path,
    as the runtime's network and containers) and service."""
    slug = re.sub(r"[^a-z0-9]+", "-", root.name.lower()).strip("-")[:30] or "project"
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return f"devenv-{slug}-{digest}-{service}-data"


def api() -> Any:
    """docker-py's low-level client of the Docker Engine (DOCKER_HOST, else the socket)."""
    global _client
    with _lock:
        if _client is None:
            try:
                import docker

                client = docker.from_env(timeout=API_TIMEOUT)
                client.api.ping()
            except Exception as exc:
                where = os.environ.get("DOCKER_HOST") or "the default socket"
                raise DevenvError(f"cannot reach the Docker Engine at {where}: {exc}",
                                  hint="start Docker, or run the data services on the local "
                                  "runtime (runtime: local)") from exc
            _client = client.api
        return _client


def _not_found(exc: Exception) -> bool:
    from docker.errors import NotFound

    return isinstance(exc, NotFound)


def ensure_volume(project: str, service: str, volume: str) -> bool:
    """The service's volume, made when missing (True: made now, so its data is fresh)."""
    client = api()
    try:
        client.inspect_volume(volume)
        return False
    except Exception as exc:
        if not _not_found(exc):
            raise DevenvError(f"{service}: cannot look up its volume {volume}: {exc}") from exc
    client.create_volume(volume, labels={PROJECT_LABEL: project, SERVICE_LABEL: service,
                                         VOLUME_LABEL: "data"})
    return True


def volume_exists(volume: str) -> bool:
    try:
        api().inspect_volume(volume)
        return True
    except Exception as exc:
        if _not_found(exc):
            return False
        raise DevenvError(f"cannot look up volume {volume}: {exc}") from exc


def remove_volume(service: str, volume: str) -> None:
    """The volume gone (its containers stopped); in use for a moment after a container
    exits, so asked again for a few seconds."""
    client = api()
    deadline = time.monotonic() + 15
    while True:
        try:
            client.remove_volume(volume, force=True)
            return
        except Exception as exc:
            if _not_found(exc):
                return
            if time.monotonic() > deadline:
                raise DevenvError(f"{service}: cannot remove its volume {volume}: {exc}",
                                  hint=f"docker volume rm {volume}") from exc
            time.sleep(0.2)


def pick_running(found: list[dict[str, Any]], replica: int | None = None
                 ) -> dict[str, Any] | None:
    """Of the running containers a project+service label filter listed, the instance to
    use: never a one-off (`run`'s, labelled ONEOFF_LABEL) nor a helper; the given replica's
    when asked; the newest (a replaced replica's successor runs beside it for a while)."""
    def labels(c: dict[str, Any]) -> dict[str, str]:
        return c.get("Labels") or {}

    fit = [c for c in found if ONEOFF_LABEL not in labels(c) and HELPER_LABEL not in labels(c)
           and not any(str(n).endswith("-run") for n in c.get("Names") or [])]
    if replica is not None:
        fit = [c for c in fit if labels(c).get(REPLICA_LABEL) == str(replica)]
    return max(fit, key=lambda c: int(c.get("Created") or 0), default=None)


def running(project: str, service: str) -> str:
    """The id of the service's running server container."""
    found = pick_running(api().containers(filters={"label": [
        f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={service}"]}))
    if found is None:
        raise DevenvError(f"{service} has no running container",
                          hint=f"start it first: devenv up --services {service}")
    return str(found["Id"])


def exec_out(cid: str, argv: list[str], user: str = "", what: str = "",
             env: dict[str, str] | None = None) -> str:
    """`argv` run in the container to its end; its output, or an error with its tail."""
    client = api()
    made = client.exec_create(cid, argv, user=user, stdout=True, stderr=True,
                              environment=env or None)
    out = bytes(client.exec_start(made["Id"])).decode(errors="replace")
    code = client.exec_inspect(made["Id"]).get("ExitCode")
    if code != 0:
        raise DevenvError(f"{what or argv[0]} failed in the container (exit code {code})",
                          details=out.strip().splitlines()[-10:])
    return out


def exec_printed(cid: str, argv: list[str], user: str = "", what: str = "") -> str:
    """What `argv`, a command that always prints (a version), printed in the container. A
    short-lived exec's output can come back empty from the daemon when the machine is
    loaded (seen once in a test run: a snapshot failed on it): asked again, up to 3 times."""
    for _ in range(3):
        out = exec_out(cid, argv, user, what)
        if out.strip():
            return out
    raise DevenvError(f"{what or argv[0]} printed nothing in the container (3 tries)")


def exec_to_file(cid: str, argv: list[str], dest: IO[bytes], stop: threading.Event,
                 user: str = "", what: str = "", timeout: float = STREAM_TIMEOUT) -> None:
    """`argv` run in the container, its standard output written to `dest` as it comes (its
    errors kept for the message). `stop` set, or `timeout` seconds gone: the stream is shut
    from outside at once (even while no output comes), and an error says which; the tool,
    its output gone, ends with it."""
    import socket

    from docker.utils.socket import STDERR, STDOUT, frames_iter

    client = api()
    made = client.exec_create(cid, argv, user=user, stdout=True, stderr=True)
    stream = client.exec_start(made["Id"], socket=True)
    raw = getattr(stream, "_sock", stream)
    done = threading.Event()
    why: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not done.wait(0.05):
            if stop.is_set() or time.monotonic() > deadline:
                why.append("cancelled" if stop.is_set() else
                           f"did not finish within {timeout:g}s")
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RDWR)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    errors = b""
    try:
        for kind, chunk in frames_iter(stream, False):
            if why:
                break
            if kind == STDOUT and chunk:
                dest.write(chunk)
            elif kind == STDERR and chunk:
                errors = (errors + chunk)[-8192:]
    except OSError:
        if not why:
            raise
    finally:
        done.set()
        watcher.join()
        with contextlib.suppress(Exception):
            stream.close()
    if why:
        raise DevenvError(f"{what or argv[0]} {why[0]}")
    code = client.exec_inspect(made["Id"]).get("ExitCode")
    if code != 0:
        raise DevenvError(f"{what or argv[0]} failed in the container (exit code {code})",
                          details=errors.decode(errors="replace").strip().splitlines()[-10:])


SECRET_DIR = "/tmp"  # where a helper's private files are put (tmp exists in every image)


def helper(project: str, service: str, image: str, volume: str, mount: str,
           argv: list[str], *, user: str = "", env: dict[str, str] | None = None,
           put: Iterator[tuple[str, IO[bytes]]] | None = None, what: str = "",
           timeout: float = HELPER_TIMEOUT, files: dict[str, bytes] | None = None,
           mask: list[str] | None = None) -> str:
    """A one-off container of `image` with the service's volume at `mount` and no network:
    `files` (name → content: secrets, never in its environment or command, which `docker
    inspect` and /proc show) put in SECRET_DIR as `user`'s owner-only files, `put` (path in
    the container, a tar to extract there), then `argv` run to its end; its output, or an
    error (each of `mask` shown as ***). Removed afterwards (and by `recover`, by its
    labels)."""
    client = api()
    _have_image(client, service, image)
    _mark(Path(project))  # before the container exists: a crash now leaves it findable
    host_config = client.create_host_config(binds={volume: {"bind": mount, "mode": "rw"}},
                                            network_mode="none")
    name = f"{volume}-helper-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    cid = str(client.create_container(
        image=image, command=argv, user=user, environment=env or {}, name=name,
        labels={PROJECT_LABEL: project, HELPER_LABEL: service}, host_config=host_config,
        volumes=[mount])["Id"])
    hidden = [m for m in (mask or []) if m]

    def masked(text: str) -> str:
        for value in hidden:
            text = text.replace(value, "***")
        return text

    try:
        if files:
            uid, gid = user_ids(cid, user)
            if not client.put_archive(cid, SECRET_DIR, private_tar(files, uid, gid)):
                raise DevenvError(f"{what}: cannot copy into the helper container")
        for path, tar in put or ():
            if not client.put_archive(cid, path, tar):
                raise DevenvError(f"{what}: cannot copy into the helper container at {path}")
        client.start(cid)
        try:
            code = int(client.wait(cid, timeout=timeout)["StatusCode"])
        except Exception as exc:
            raise DevenvError(f"{what or argv[0]} did not finish within {timeout:g}s",
                              hint=f"see `docker logs` of {name}") from exc
        out = bytes(client.logs(cid, stdout=True, stderr=True)).decode(errors="replace")
        if code != 0:
            raise DevenvError(f"{what or argv[0]} failed (exit code {code})",
                              details=masked(out).strip().splitlines()[-10:])
        return masked(out)
    finally:
        with contextlib.suppress(Exception):
            client.remove_container(cid, force=True)


def _mark(root: Path) -> None:
    """The docker runtime's marker (`.devenv/run/docker.json`): while present, the next
    engine's `recover` removes what this project's labels name (a helper container too)."""
    from devenv.core.atomic import write_atomic
    from devenv.core.paths import StateDir, private_dir

    marker = StateDir(root).run / MARKER
    if not marker.exists():
        private_dir(marker.parent)
        write_atomic(marker, json.dumps({"helper": True}), mode=0o600)


def private_tar(files: dict[str, bytes], uid: int, gid: int) -> bytes:
    """A tar of `files` (name → content), each mode 0600 and owned by uid:gid."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), 0o600, uid, gid
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def user_ids(cid: str, user: str) -> tuple[int, int]:
    """The uid and gid `user` (`name`, `uid` or `uid:gid`, as `docker run --user`) has in the
    (created) container `cid`: numbers as given, a name from the image's /etc/passwd."""
    name, _, group = user.partition(":")
    if not name or name.isdigit():
        uid = int(name or 0)
        return uid, int(group) if group.isdigit() else uid
    import tarfile

    stream, _ = api().get_archive(cid, "/etc/passwd")
    with tarfile.open(fileobj=_Chunks(stream), mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            source = tar.extractfile(member)
            text = source.read().decode(errors="replace") if source is not None else ""
            for line in text.splitlines():
                fields = line.split(":")
                if len(fields) > 3 and fields[0] == name:
                    return int(fields[2]), int(group) if group.isdigit() else int(fields[3])
            break
    raise DevenvError(f"the image has no user {name!r} (not in its /etc/passwd)")


def _have_image(client: Any, service: str, image: str) -> None:
    try:
        client.inspect_image(image)
        return
    except Exception as exc:
        if not _not_found(exc):
            raise DevenvError(f"{service}: cannot look up image {image!r}: {exc}") from exc
    try:
        client.pull(image)
    except Exception as exc:
        raise DevenvError(f"{service}: image {image!r} is not on this machine and pulling it "
                          f"failed: {exc}", hint=f"pull it, or give services.{service} an "
                          "`image:` that is on this machine") from exc


def swap_script(mount: str, live: str) -> str:
    """A helper's shell script that puts `<live>.restore-new` in place of `live` (renames
    inside the volume, idempotent: a crash at any point is finished by running it again);
    it says `swapped` when it did."""
    new, old = f"{live}.restore-new", f"{live}.restore-old"
    return (f"set -e; cd {mount}; if [ -d {new} ]; then rm -rf {old}; if [ -d {live} ]; "
            f"then mv {live} {old}; fi; mv {new} {live}; echo swapped; fi")


def adopt_script(mount: str, unique: str, live: str, owner: str) -> str:
    """A helper's (root's) script: the copy extracted at `unique` made the server user's and
    renamed `<live>.restore-tmp`, earlier staged copies gone."""
    return (f"set -e; cd {mount}; rm -rf {live}.restore-tmp {live}.restore-new; "
            f"chown -R {owner}:{owner} {unique}; chmod 700 {unique}; "
            f"mv {unique} {live}.restore-tmp")


def get_file(cid: str, path: str, dest: Path) -> None:
    """One file of a container copied to `dest` (owner-only), through the archive API."""
    import tarfile

    from devenv.core.paths import private_opener

    stream, _ = api().get_archive(cid, path)
    reader = _Chunks(stream)
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            if not member.isfile():
                raise DevenvError(f"expected a file at {path} in the container")
            source = tar.extractfile(member)
            assert source is not None
            with open(dest, "wb", opener=private_opener) as fh:
                while chunk := source.read(1 << 20):
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            return
    raise DevenvError(f"no file at {path} in the container")


class _Chunks:
    """An iterator of bytes as a file to read from (tarfile's stream mode)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = iter(chunks)
        self._buf = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += chunk
        if size < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out
