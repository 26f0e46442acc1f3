"""The docker runtime: each instance of a service with `image:` or `build:` is a container.

Through docker-py (the Docker Engine's maintained client). The engine stays on the host:
every container publishes its port on 127.0.0.1 (a free host port each), which is the
instance's endpoint, so the ingress, health probes and the service's stable address (the
engine's balancer, as locally) work unchanged. Containers share one network per project and
reach each other by the service's alias. Every container and network carries the project's
labels; `recover` removes what a dead engine left, `close` what this one still runs.

Blocking Engine API calls run in threads: short ones in asyncio's, the long ones (a
container's log stream and its wait for exit) in daemon threads of their own, so that an
engine never waits for them to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError
from devenv.core.paths import StateDir
from devenv.data.container import ONEOFF_LABEL, pick_running
from devenv.runtime.balancer import Balancer
from devenv.runtime.base import (
    Attached,
    Backends,
    Instance,
    InstanceSpec,
    OutputLine,
    Resources,
    RunResult,
    Target,
    with_port,
)
from devenv.runtime.docker_spec import (
    ENGINE_LABEL,
    HOST,
    PROJECT_LABEL,
    SERVICE_LABEL,
    CreateArgs,
    LineSplitter,
    built_tag,
    changed_since,
    create_args,
    exit_code,
    inner_port,
    network_name,
    project_labels,
    resources_from,
)

API_TIMEOUT = 60.0  # seconds for one Engine API call (builds and waits have none)
PING_TIMEOUT = 5.0
OUTPUT_GRACE = 2.0  # a container's log stream may end this long after it exited
STATS_WAIT = 1.0  # seconds a resources() sample is waited for (then: the last one)
STOP_MARGIN = 30.0  # past its stop_timeout, a stop gives up waiting for the container
SKIPPED = {".devenv", ".git", "node_modules", "__pycache__", ".venv"}  # not in a fingerprint


def _not_yet(what: str) -> DevenvError:
    return DevenvError(f"{what} is not on the docker runtime yet",
                       hint="run the service on the local runtime for this (runtime: local)")


class DockerInstance:
    def __init__(self, spec: InstanceSpec, runtime: DockerRuntime, cid: str,
                 port: int | None):
        self.spec = spec
        self.cid = cid
        self._runtime = runtime
        self._port = port
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._lines: asyncio.Queue[OutputLine | None] = asyncio.Queue()
        self._cpu = (time.time(), 0.0)  # the last stats sample: when, CPU seconds
        self._resources: Resources | None = None
        self._sample_lock = threading.Lock()
        self._streams = threading.Semaphore(0)  # released as each stream ends
        for stream in ("out", "err"):
            threading.Thread(target=self._read, args=(stream,), name=f"{spec.name}-{stream}",
                             daemon=True).start()
        threading.Thread(target=self._wait, name=f"{spec.name}-wait", daemon=True).start()

    @property
    def id(self) -> str:
        return f"{self.spec.name}#{self.cid[:12]}"

    @property
    def endpoint(self) -> tuple[str, int] | None:
        return (HOST, self._port) if self._port else None

    def _post(self, callback: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the engine's loop closed: nobody listens
            self._loop.call_soon_threadsafe(callback, *args)

    def _read(self, stream: str) -> None:
        """One of the container's streams, from its start (its log is replayed), by line."""
        splitter = LineSplitter()
        try:
            chunks = self._runtime.api().logs(self.cid, stdout=stream == "out",
                                              stderr=stream == "err", stream=True,
                                              follow=True)
            for chunk in chunks:
                for line in splitter.feed(chunk):
                    self._post(self._lines.put_nowait, OutputLine(stream, line))
        except Exception:  # (removed, or the Docker Engine went away)
            pass
        finally:
            for line in splitter.end():
                self._post(self._lines.put_nowait, OutputLine(stream, line))
            self._post(self._lines.put_nowait, None)
            self._streams.release()

    def _wait(self) -> None:
        """Wait for the container to exit, then remove it (its output read first)."""
        code = -1
        for _ in range(30):  # (a lost connection to the Docker Engine: ask again)
            try:
                code = exit_code(int(self._runtime.api().wait(self.cid)["StatusCode"]))
                break
            except Exception as exc:
                if _not_found(exc):
                    code = -9  # removed under us
                    break
                time.sleep(1.0)
        deadline = time.monotonic() + OUTPUT_GRACE
        for _ in range(2):
            self._streams.acquire(timeout=max(0.0, deadline - time.monotonic()))
        self._runtime.remove(self.cid)
        self._post(_settle, self._exit, code)

    async def output(self) -> AsyncIterator[OutputLine]:
        open_streams = 2
        while open_streams:
            item = await self._lines.get()
            if item is None:
                open_streams -= 1
            else:
                yield item

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def stop(self) -> int:
        """The stop signal, KILL after the spec's stop_timeout (the Docker Engine does both),
        and the container removed; bounded even when the Docker Engine does not answer."""
        if not self._exit.done():
            timeout = self.spec.stop_timeout
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(
                    self._runtime.api().stop, self.cid, timeout=max(1, round(timeout))),
                    timeout + STOP_MARGIN)
        try:
            return await asyncio.wait_for(asyncio.shield(self._exit), STOP_MARGIN)
        except TimeoutError:
            return -9

    def resources(self) -> Resources | None:
        """From the Engine's stats (one sample, no wait for a second one), taken in a thread
        and waited for at most STATS_WAIT (else the last one): the engine's loop is never
        held by a slow Docker Engine."""
        if self._exit.done():
            return None
        future = self._runtime.sampler.submit(self._sample)
        try:
            return future.result(timeout=STATS_WAIT)
        except Exception:
            return self._resources

    def _sample(self) -> Resources | None:
        stats = self._runtime.api().stats(self.cid, stream=False, one_shot=True)
        with self._sample_lock:
            self._resources, self._cpu = resources_from(stats, time.time(), self._cpu)
        return self._resources

    def targets(self) -> list[Target]:
        raise _not_yet("profiling")

    async def attach(self, target: str, argv: tuple[str, ...], timeout: float) -> Attached:
        raise _not_yet("profiling")


def _settle(future: asyncio.Future[int], code: int) -> None:
    if not future.done():
        future.set_result(code)


def _not_found(exc: Exception) -> bool:
    from docker.errors import NotFound

    return isinstance(exc, NotFound)


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file of `folder` (relative path -> size, mtime), as `fingerprint` walks it."""
    found: dict[str, tuple[int, int]] = {}
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED)
        for name in files:
            path = os.path.join(top, name)
            with contextlib.suppress(OSError):
                st = os.stat(path)
                found[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return found


def files_tar(folder: Path, names: list[str]) -> bytes:
    """`names` (relative to `folder`) as a tar to extract in a container."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in names:
            with contextlib.suppress(OSError):  # (gone meanwhile: the next change says so)
                tar.add(folder / name, arcname=name, recursive=False)
    return buf.getvalue()


def build_files(context: Path) -> Iterator[str]:
    """Every file of a build context (not the SKIPPED folders), in a stable order."""
    for folder, dirs, files in os.walk(context):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED)
        for name in sorted(files):
            yield os.path.join(folder, name)


def fingerprint(context: Path) -> str:
    """What a build's result depends on, cheaply: every file's path, size and mtime."""
    parts: list[str] = []
    for path in build_files(context):
        with contextlib.suppress(OSError):
            st = os.stat(path)
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class DockerRuntime:
    name = "docker"

    def __init__(self, root: Path):
        self.root = root
        self.state = StateDir(root)
        self.token = secrets.token_hex(8)  # the label of everything this engine makes
        self._api: Any = None
        self._serial = 0
        self._instances: dict[str, DockerInstance] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._built: dict[str, str] = {}
        self._baseline: dict[str, dict[str, tuple[int, int]]] = {}  # copy_in: first start
        self.sampler = ThreadPoolExecutor(4, thread_name_prefix="docker-stats")
        self._network = False

    @property
    def _marker(self) -> Path:
        """Present while this project may have containers: `recover` asks Docker only then."""
        return self.state.run / "docker.json"

    # ---- the Engine API

    def api(self) -> Any:
        """docker-py's client of the Docker Engine (DOCKER_HOST, else the local socket)."""
        if self._api is None:
            self._api = connect(API_TIMEOUT)
        return self._api

    def remove(self, cid: str) -> None:
        with contextlib.suppress(Exception):
            self.api().remove_container(cid, force=True)
        self._instances.pop(cid, None)

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _image(self, spec: InstanceSpec) -> str:
        """The image to run: built from the service's context when it changed since this
        engine last built it, else the named one (pulled when it is not on the machine)."""
        container = spec.container
        if container is None:
            raise DevenvError(f"{spec.service}: has no image: or build: to run on the docker "
                              "runtime", hint=f"give services.{spec.service} an image")
        async with self._lock(f"image:{spec.service}"):
            if container.build_context is not None:
                context = self.root / container.build_context
                mark = await asyncio.to_thread(fingerprint, context)
                tag = built_tag(self.root, spec.service)
                if self._built.get(spec.service) != mark:
                    await asyncio.to_thread(self._build, spec.service, context,
                                            container.dockerfile, tag)
                    self._built[spec.service] = mark
                return tag
            assert container.image is not None
            await asyncio.to_thread(self._pull, spec.service, container.image)
            return container.image

    def _build(self, service: str, context: Path, dockerfile: str | None, tag: str) -> None:
        if not context.is_dir():
            raise DevenvError(f"{service}: build context {context} is not a folder",
                              hint=f"check services.{service}.build")
        said: list[str] = []
        try:
            for chunk in self.api().build(path=str(context), dockerfile=dockerfile, tag=tag,
                                          rm=True, decode=True,
                                          labels=project_labels(self.root, self.token)):
                if "stream" in chunk:
                    said += str(chunk["stream"]).splitlines()
                if "error" in chunk:
                    raise DevenvError(f"{service}: the image build failed: "
                                      f"{str(chunk['error']).strip()}", details=said[-20:],
                                      hint=f"check {context}'s Dockerfile")
        except DevenvError:
            raise
        except Exception as exc:
            raise DevenvError(f"{service}: the image build failed: {exc}",
                              details=said[-20:]) from exc

    def _pull(self, service: str, image: str) -> None:
        try:
            self.api().inspect_image(image)
            return
        except Exception as exc:
            if not _not_found(exc):
                raise DevenvError(f"{service}: cannot look up image {image!r}: {exc}") from exc
        try:
            self.api().pull(image)
        except Exception as exc:
            raise DevenvError(f"{service}: image {image!r} is not on this machine and pulling "
                              f"it failed: {exc}", hint="pull or build it (docker pull / "
                              f"docker build), or give services.{service} a `build:`") from exc

    def _ensure_network(self) -> str:
        name = network_name(self.root)
        if self._network:
            return name
        api = self.api()
        with contextlib.suppress(OSError):
            write_atomic(self._marker, json.dumps({"network": name}), mode=0o600)
        if not api.networks(names=[name]):
            try:
                api.create_network(name, driver="bridge",
                                   labels=project_labels(self.root, self.token))
            except Exception as exc:
                if "already exists" not in str(exc):
                    raise DevenvError(f"cannot make the project's Docker network {name}: "
                                      f"{exc}") from exc
        self._network = True
        return name

    # ---- instances

    async def start(self, spec: InstanceSpec) -> DockerInstance:
        await asyncio.to_thread(self.api)
        image = await self._image(spec)
        async with self._lock("network"):
            await asyncio.to_thread(self._ensure_network)
        self._serial += 1
        args = create_args(self.root, spec, image, self.token, self._serial)
        changes = await self._changes(spec) if spec.container and spec.container.copy_in \
            else None
        cid, port = await asyncio.to_thread(self._create, spec, args, changes)
        instance = DockerInstance(spec, self, cid, port)
        self._instances[cid] = instance
        return instance

    async def _changes(self, spec: InstanceSpec) -> bytes | None:
        """Hot reload of a service run from an image: the files of its folder changed since
        this engine first started it, as a tar for the new container (None: no change)."""
        folder = self.root / spec.workdir
        now = await asyncio.to_thread(folder_state, folder)
        baseline = self._baseline.setdefault(spec.service, now)
        changed = changed_since(baseline, now)
        return await asyncio.to_thread(files_tar, folder, changed) if changed else None

    def _create(self, spec: InstanceSpec, args: CreateArgs,
                changes: bytes | None = None) -> tuple[str, int | None]:
        api = self.api()
        host_config = api.create_host_config(port_bindings=args.publish, init=True,
                                             binds=args.binds() or None)
        networking = api.create_networking_config(
            {args.network: api.create_endpoint_config(aliases=args.aliases)})
        try:
            cid = str(api.create_container(**args.create_kwargs(), host_config=host_config,
                                           networking_config=networking)["Id"])
        except Exception as exc:
            raise DevenvError(f"{spec.service}: cannot make its container: {exc}") from exc
        try:
            if changes:  # into its working folder (the image's), before it starts
                workdir = api.inspect_container(cid)["Config"].get("WorkingDir") or "/"
                api.put_archive(cid, workdir, changes)
            api.start(cid)
            ports = api.inspect_container(cid)["NetworkSettings"]["Ports"] or {}
        except Exception as exc:
            self.remove(cid)
            raise DevenvError(f"{spec.service}: cannot start its container: {exc}") from exc
        if not args.ports:
            return cid, None
        bound = ports.get(f"{args.ports[0]}/tcp") or []
        host_port = next((int(b["HostPort"]) for b in bound if b.get("HostIp") == HOST), None)
        if host_port is None:  # (exited at once: its wait reports that)
            return cid, None
        return cid, host_port

    async def run(self, spec: InstanceSpec, argv: tuple[str, ...], timeout: float,
                  instance: Instance | None = None) -> RunResult:
        """In `instance`'s container when given (a health check), else in a new container of
        the service's image on the project's network, removed afterwards."""
        if isinstance(instance, DockerInstance) and not instance._exit.done():
            return await self._exec_in(instance, argv, timeout)
        image = await self._image(spec)
        async with self._lock("network"):
            await asyncio.to_thread(self._ensure_network)
        self._serial += 1
        one_off = InstanceSpec(service=spec.service, replica=spec.replica, command=argv,
                               env=spec.env, workdir=spec.workdir, wants_port=False,
                               container=spec.container)
        args = create_args(self.root, one_off, image, self.token, self._serial)
        args = CreateArgs(**{**args.__dict__, "name": args.name + "-run",
                             "labels": {**args.labels, ONEOFF_LABEL: "1"}})
        try:
            cid, _ = await asyncio.to_thread(self._create, one_off, args)
        except DevenvError as exc:
            return RunResult(127, exc.message)
        try:
            result = await asyncio.wait_for(asyncio.to_thread(self.api().wait, cid), timeout)
            code = exit_code(int(result["StatusCode"]))
            out = await asyncio.to_thread(self.api().logs, cid, stdout=True, stderr=True)
            return RunResult(code, bytes(out)[-65536:].decode(errors="replace"))
        except TimeoutError:
            return RunResult(-9, f"timed out after {timeout:g}s")
        finally:
            await asyncio.to_thread(self.remove, cid)

    async def _exec_in(self, instance: DockerInstance, argv: tuple[str, ...],
                       timeout: float) -> RunResult:
        api = self.api()
        port = inner_port(instance.spec)
        try:
            made = await asyncio.to_thread(api.exec_create, instance.cid,
                                           list(with_port(argv, port)))
            out = await asyncio.wait_for(asyncio.to_thread(api.exec_start, made["Id"]),
                                         timeout)
            info = await asyncio.to_thread(api.exec_inspect, made["Id"])
        except TimeoutError:
            return RunResult(-9, f"timed out after {timeout:g}s")
        except Exception as exc:
            return RunResult(127, f"cannot run {argv[0]!r} in the container: {exc}")
        code = info.get("ExitCode")
        return RunResult(exit_code(int(code)) if code is not None else -1,
                         bytes(out)[-65536:].decode(errors="replace"))

    def exec(self, spec: InstanceSpec, argv: tuple[str, ...], *, tty: bool) -> int:
        """`docker exec` in a running container of the service, attached to this terminal."""
        docker = shutil.which("docker")
        if docker is None:
            raise DevenvError("the docker command is not installed",
                              hint="install Docker's CLI (docker.io) to exec into a container")
        found = pick_running(self.api().containers(filters={"label": [
            f"{PROJECT_LABEL}={self.root}", f"{SERVICE_LABEL}={spec.service}"]}),
            spec.replica or None)  # (0: any replica, the newest)
        if found is None:
            raise DevenvError(f"{spec.service} has no running container",
                              hint=f"start it first: devenv up --services {spec.service}")
        flags = ["-i", "-t"] if tty else ["-i"]  # (it runs in the container's environment)
        proc = subprocess.run([docker, "exec", *flags, found["Id"], *argv], check=False)
        return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode

    def address(self, service: str, port: int, backends: Backends) -> Balancer:
        return Balancer(service, port, backends)

    def recover(self) -> int:
        """Remove the containers and network a dead engine of this project left (only when
        this project ran containers: otherwise the Docker Engine is not even asked)."""
        if not self._marker.exists():
            return 0
        try:
            api = connect(PING_TIMEOUT)
        except DevenvError:
            return 0
        count = _remove_labelled(api, self.root)
        self._marker.unlink(missing_ok=True)
        return count

    async def close(self) -> None:
        """Stop what still runs, then remove the project's network."""
        await asyncio.gather(*(i.stop() for i in list(self._instances.values())),
                             return_exceptions=True)
        self.sampler.shutdown(wait=False, cancel_futures=True)
        if self._api is not None and self._network:
            await asyncio.to_thread(_remove_labelled, self._api, self.root)
            self._network = False
            self._marker.unlink(missing_ok=True)


def _remove_labelled(api: Any, root: Path) -> int:
    """Every container (running or not) and network labelled with the project: removed."""
    label = f"{PROJECT_LABEL}={root}"
    count = 0
    with contextlib.suppress(Exception):
        for found in api.containers(all=True, filters={"label": label}):
            with contextlib.suppress(Exception):
                api.remove_container(found["Id"], force=True)
                count += 1
    with contextlib.suppress(Exception):
        for net in api.networks(filters={"label": label}):
            with contextlib.suppress(Exception):
                api.remove_network(net["Id"])
    return count


def connect(timeout: float) -> Any:
    """A client of the Docker Engine that answered a ping; a clear error when none does."""
    try:
        import docker
    except ImportError as exc:
        raise DevenvError("the docker runtime needs docker-py",
                          hint="pip install docker") from exc
    where = os.environ.get("DOCKER_HOST") or "the default socket (/var/run/docker.sock)"
    try:
        client = docker.from_env(timeout=int(timeout), max_pool_size=64)
        client.api.ping()
    except Exception as exc:
        raise DevenvError(f"cannot reach the Docker Engine at {where}: {exc}",
                          hint="start Docker (dockerd) or point DOCKER_HOST at it; or run on "
                          "the local runtime (runtime: local)") from exc
    return client.api


__all__ = ["ENGINE_LABEL", "DockerInstance", "DockerRuntime", "connect", "fingerprint"]
