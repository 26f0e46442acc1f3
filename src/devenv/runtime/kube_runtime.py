"""The kubernetes runtime: the engine's replicas of a service are the pods of its Deployment.

The mapping. The engine (`ServiceRunner`) keeps N replicas of a service, each an `Instance`
it starts, probes, routes to and stops. Here each instance is one *slot* of the service's
Deployment: starting one applies the service's manifests (server-side apply, field manager
"devenv") with `replicas` = the slots now wanted, then claims one pod of it no other slot
holds and waits for its container to run; stopping one marks its pod to go first
(`pod-deletion-cost`), scales the Deployment down by one and deletes the pod. So `scale`
patches the Deployment's replicas, and `status` lists the pods (`api-1#api-7d9c-x2k`).
An instance's endpoint is a port-forward to its pod (127.0.0.1, through the API's
portforward), behind the engine's usual stable address and ingress; its output is its pod's
log stream; its exit is its container's (a kubelet restart counts as one). When its pod is
deleted under it (a rollout, an eviction) it moves to another unclaimed pod of the
Deployment, keeping its address.

Around that: `provider: k3d` makes or reuses the cluster at the pinned version first (a
cluster at another version is refused here: `devenv up` recreates it first, when asked, with
devenv.runtime.kube_recreate); images of services with `build:`
are built with Docker (docker-py) and imported into the k3d cluster, or, on a cluster that
exists, pushed to `registry:` under a tag that is their files' digest (their Deployment runs
that reference: a change, a new tag, a rollout); the Namespace and the
data services' StatefulSets (their data in PersistentVolumeClaims) are applied first, and
waited for. A data service's instance is its StatefulSet's pod (`_start_data`): the one
server of its data, which stopping the instance leaves running (devenv's data commands act
on it through devenv.data.cluster). `close` deletes what the project made by its labels,
keeping the volumes unless the `stop` discarded the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError
from devenv.core.paths import StateDir
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
from devenv.runtime.kubernetes import KubeApi, pod_state

START_TIMEOUT = 120.0  # at least this long for a pod to run (image pulls), or start_period
DATA_TIMEOUT = 300.0  # for the data services' StatefulSets to be ready
POLL = 0.25  # while a start waits for its pod
WATCH_EVERY = 1.0  # how often a running instance's pod is looked at
REBIND_TIMEOUT = 30.0  # a slot whose pod went waits this long for another
LOST_AFTER = 30  # failed looks at a pod in a row: the cluster is lost to this instance
OUTPUT_GRACE = 2.0
STOP_MARGIN = 30.0
PUSH_TIMEOUT = 300.0  # seconds for one push call (a large layer included)
IMAGE_ANNOTATION = "devenv.dev/image-id"  # a new build changes the template: a rollout


@dataclass
class Cluster:
    """What this engine talks to: the API, its context, the project's namespace."""

    api: KubeApi
    context: str | None
    namespace: str
    selector: str  # every object devenv made for the project


def _project(root: Path, loaded: Any) -> Any:
    if loaded is not None:
        return loaded
    from devenv.config.load import load

    return load(root)


def connect(loaded: Any, ensure: bool) -> Cluster:
    """The project's cluster. `ensure`: with provider k3d, create it at the pinned version
    when it is missing (a cluster at another version is refused: `up --yes` recreates it)."""
    from devenv.kube import k3d
    from devenv.kube.render import namespace, project_selector

    cluster = loaded.project.cluster
    context = cluster.context
    if cluster.provider == "k3d":
        name = k3d.cluster_name(loaded.name, cluster.name)
        if ensure:
            version = loaded.project.kubernetes.version
            found = k3d.ensure_cluster(name, version)
            if found.action == "recreate-needed":  # (`devenv up` recreates it first)
                raise DevenvError(
                    f"the k3d cluster {name} runs {found.found_image}, but the project pins "
                    f"Kubernetes {version} ({found.image})",
                    hint=f"`devenv up --yes` recreates it at {version} with the data "
                    "carried over (a snapshot), or pin the version it runs (devenv config "
                    "set kubernetes.version ...)")
        context = f"k3d-{name}"  # (the context k3d writes into the kubeconfig)
    api = KubeApi.connect(context=context)
    return Cluster(api, context, namespace(loaded), project_selector(loaded.name))


class KubeInstance:
    """One slot of a service's Deployment: a pod, its log stream, a port-forward to it."""

    def __init__(self, spec: InstanceSpec, runtime: KubernetesRuntime, pod: str,
                 restarts: int, port: int | None, data: bool = False):
        self.spec = spec
        self.data = data  # the pod of a data service's StatefulSet, which devenv never scales
        self.pod = pod
        self.port = port
        self._runtime = runtime
        self._first = pod
        self._restarts = restarts
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._lines: asyncio.Queue[OutputLine | None] = asyncio.Queue()
        self._reading: threading.Event | None = None
        self.stopping = False
        self.forwarder: Any = None
        self._follow(pod)
        self._watcher = asyncio.create_task(self._watch(), name=f"{spec.name}-watch")

    @property
    def id(self) -> str:
        return f"{self.spec.name}#{self._first}"

    @property
    def endpoint(self) -> tuple[str, int] | None:
        if self.forwarder is None or not self.forwarder.local_port:
            return None
        return ("127.0.0.1", int(self.forwarder.local_port))

    @property
    def exited(self) -> bool:
        return self._exit.done()

    def _post(self, callback: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the engine's loop closed
            self._loop.call_soon_threadsafe(callback, *args)

    def _say(self, text: str) -> None:
        self._lines.put_nowait(OutputLine("err", f"[devenv] {text}"))

    def _follow(self, pod: str) -> None:
        """Read `pod`'s log (from its container's start) in a daemon thread, line by line."""
        done = self._reading = threading.Event()
        cluster = self._runtime.cluster
        assert cluster is not None

        def read() -> None:
            try:
                for line in cluster.api.log_lines(cluster.namespace, pod,
                                                  container=self.spec.service):
                    self._post(self._lines.put_nowait, OutputLine("out", line))
            except Exception:  # (the pod went, or the API did)
                pass
            finally:
                done.set()

        threading.Thread(target=read, name=f"{self.spec.name}-log", daemon=True).start()

    async def output(self) -> AsyncIterator[OutputLine]:
        while (item := await self._lines.get()) is not None:
            yield item

    async def _watch(self) -> None:
        """Until the container exits (a kubelet restart too) or the pod is gone for good."""
        cluster = self._runtime.cluster
        assert cluster is not None
        failures = 0
        while not self._exit.done():
            await asyncio.sleep(WATCH_EVERY)
            try:
                pod = await asyncio.to_thread(cluster.api.pod, cluster.namespace, self.pod)
                failures = 0
            except LookupError:
                pod = None
            except Exception as exc:
                failures += 1
                if failures >= LOST_AFTER:
                    self._say(f"lost the cluster: {exc}")
                    await self._end(-9)
                continue
            if self.stopping:
                continue
            state = pod_state(pod, self.spec.service) if pod is not None else None
            if state is None or state.deleting:
                self._say(f"pod {self.pod} is going; moving to another pod")
                found = await self._runtime.rebind(self)
                if found is None:
                    self._say(f"no other pod of {self.spec.service} ran within "
                              f"{REBIND_TIMEOUT:g}s")
                    await self._end(-9)
                    return
                self.pod, self._restarts = found
                self._follow(self.pod)
                continue
            if state.restarts > self._restarts or state.ended:
                code = state.last_exit if state.last_exit is not None else 1
                how = "ended" if state.ended else "restarted by the kubelet"
                self._say(f"pod {self.pod}: the container {how} (exit code {code})")
                await self._end(code)
                return

    async def _end(self, code: int) -> None:
        if self._exit.done():
            return
        self._runtime.release(self)
        if self._reading is not None:
            await asyncio.to_thread(self._reading.wait, OUTPUT_GRACE)
        if self.forwarder is not None:
            await self.forwarder.close()
        self._lines.put_nowait(None)
        if not self._exit.done():
            self._exit.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def stop(self) -> int:
        """Its pod goes first when the Deployment is scaled down by one; then it is deleted
        (the kubelet stops it: TERM, KILL after the grace period) and waited for."""
        if self._exit.done():
            return self._exit.result()
        self.stopping = True
        if self.data:  # (its server keeps running: only this side of it stops)
            self._watcher.cancel()
            await self._end(0)
            return self._exit.result()
        cluster = self._runtime.cluster
        assert cluster is not None
        api, ns = cluster.api, cluster.namespace
        await self._runtime.scale_down(self)
        deadline = time.monotonic() + self.spec.stop_timeout + STOP_MARGIN
        while time.monotonic() < deadline:
            try:
                await asyncio.to_thread(api.pod, ns, self.pod)
            except LookupError:
                break
            except Exception:
                break  # (the API went away: nothing more to wait for)
            await asyncio.sleep(POLL)
        self._watcher.cancel()
        await self._end(0)
        return self._exit.result()

    def resources(self) -> Resources | None:
        return None  # (the metrics API is not read yet)

    def targets(self) -> list[Target]:
        raise _no_profiling()

    async def attach(self, target: str, argv: tuple[str, ...], timeout: float) -> Attached:
        raise _no_profiling()


def _no_profiling() -> DevenvError:
    return DevenvError("profiling is not on the kubernetes runtime yet",
                       hint="run the service on the local runtime to profile it")


class KubernetesRuntime:
    """`runtime: kubernetes`: each service with `image:` or `build:` as a Deployment."""

    name = "kubernetes"

    def __init__(self, root: Path):
        self.root = root
        self.state = StateDir(root)
        self.loaded: Any = None  # the project of the last `up` (its profile, its ${VAR}s)
        self.keep_data = True  # `stop` without --persist-data turns it off: PVCs go too
        self.cluster: Cluster | None = None
        self._session: Any = None
        self._link: Any = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._slots: dict[str, list[KubeInstance]] = {}
        self._starting: dict[str, int] = {}
        self._claimed: dict[str, str] = {}  # pod → the service whose slot holds it
        # service → (fingerprint, image id, the reference pushed to the registry or None)
        self._built: dict[str, tuple[str, str, str | None]] = {}
        self._warned: set[str] = set()
        self._local: Any = None  # one-off commands not meant for a pod run here

    def configure(self, loaded: Any) -> None:
        """The project as `up` loaded it: what the manifests are rendered from."""
        self.loaded = loaded

    @property
    def _marker(self) -> Path:
        """Present while this project may have objects on a cluster (for `recover`)."""
        return self.state.run / "kubernetes.json"

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # ---- the cluster

    async def _setup(self) -> Cluster:
        async with self._lock("setup"):
            if self.cluster is not None:
                return self.cluster
            loaded = _project(self.root, self.loaded)
            cluster = await asyncio.to_thread(connect, loaded, True)
            self.record(cluster)
            import aiohttp

            from devenv.runtime.kube_stream import Link

            self._link = Link.of(cluster.api.client.configuration)
            self._session = aiohttp.ClientSession()
            self.cluster = cluster
            await asyncio.to_thread(self.apply_shared, loaded, cluster)
            return cluster

    def record(self, cluster: Cluster) -> None:
        """Where the project's objects are (`recover`; the data commands' way in)."""
        with contextlib.suppress(OSError):
            write_atomic(self._marker, json.dumps({
                "context": cluster.context, "namespace": cluster.namespace,
                "selector": cluster.selector}), mode=0o600)

    def apply_shared(self, loaded: Any, cluster: Cluster) -> None:
        """The Namespace, then every data service (a StatefulSet, its Services and Secrets,
        its volume): the cluster's services reach them by their Service's name. Waited for."""
        from devenv.kube.render import render
        from devenv.plan import make_plan

        plan = make_plan(loaded)
        data = [n for n, p in plan.services.items() if p.data is not None]
        rendered = render(loaded, plan, services=data) if data else render(loaded, plan)[:1]
        for item in rendered:
            for manifest in item.all():
                self._apply(cluster, manifest)
        deadline = time.monotonic() + DATA_TIMEOUT
        for name in data:
            while True:
                found = cluster.api.get("apps/v1", "StatefulSet", cluster.namespace, name)
                if _statefulset_ready(found):
                    break
                if time.monotonic() > deadline:
                    raise DevenvError(f"{name}: its StatefulSet was not ready in the cluster "
                                      f"within {DATA_TIMEOUT:g}s",
                                      details=cluster.api.events(cluster.namespace,
                                                                 f"{name}-0"),
                                      hint=f"see its pod: kubectl -n {cluster.namespace} "
                                      f"describe pod {name}-0")
                time.sleep(POLL)

    def _apply(self, cluster: Cluster, manifest: dict[str, Any]) -> None:
        try:
            cluster.api.apply(manifest)
        except LookupError:  # (an API this cluster does not serve: Traefik's Middleware)
            what = f"{manifest.get('apiVersion')}/{manifest.get('kind')}"
            if what not in self._warned:
                self._warned.add(what)
                print(f"kubernetes: the cluster does not serve {what}; "
                      f"{manifest['metadata']['name']} was not applied", file=sys.stderr)

    # ---- images

    async def _image_id(self, spec: InstanceSpec, loaded: Any
                        ) -> tuple[str | None, str | None]:
        """A `build:` service's image, built with Docker when its files changed since this
        engine built it, then imported into the k3d cluster, or (a cluster that exists)
        tagged `<registry>/<namespace>/<project>-<service>:<content digest>` and pushed;
        (its id, the reference pushed), (None, None) for an `image:`."""
        container = spec.container
        if container is None or container.build_context is None:
            return None, None
        from devenv.kube import k3d
        from devenv.kube.render import built_image, pushes, repository
        from devenv.runtime.docker import fingerprint

        push = pushes(loaded)
        if push:
            repository(loaded, spec.service)  # (no registry, or not a usable one: refused)
        async with self._lock(f"image:{spec.service}"):
            context = self.root / container.build_context
            mark = await asyncio.to_thread(fingerprint, context)
            built = self._built.get(spec.service)
            if built is not None and built[0] == mark:
                return built[1], built[2]
            if push:
                from devenv.kube.render import pushed_image

                ref: str | None = await asyncio.to_thread(
                    pushed_image, loaded, spec.service, container.build_context,
                    container.dockerfile)
                assert ref is not None
                image_id = await asyncio.to_thread(_build, spec.service, context,
                                                   container.dockerfile, ref)
                await asyncio.to_thread(_push, spec.service, ref,
                                        loaded.project.registry.url)
            else:
                ref, tag = None, built_image(loaded.name, spec.service)
                image_id = await asyncio.to_thread(_build, spec.service, context,
                                                   container.dockerfile, tag)
                name = k3d.cluster_name(loaded.name, loaded.project.cluster.name)
                await asyncio.to_thread(k3d.import_images, name, [tag])
            self._built[spec.service] = (mark, image_id, ref)
            return image_id, ref

    # ---- instances

    async def start(self, spec: InstanceSpec) -> KubeInstance:
        from devenv.plan import service_plan

        cluster = await self._setup()
        loaded = _project(self.root, self.loaded)
        plan = service_plan(loaded, spec.service)
        if plan.data is not None:
            return await self._start_data(spec, plan, cluster)
        if plan.job:
            raise DevenvError(f"{spec.service}: one-shot jobs are not on the kubernetes "
                              "runtime yet", hint="run it on the local runtime")
        image_id, pushed = await self._image_id(spec, loaded)
        slots = self._slots.setdefault(spec.service, [])
        async with self._lock(spec.service):
            self._starting[spec.service] = self._starting.get(spec.service, 0) + 1
            wanted = len(slots) + self._starting[spec.service]
            manifests = _manifests(loaded, plan, wanted, image_id, pushed)
            try:
                for manifest in manifests:
                    await asyncio.to_thread(self._apply, cluster, manifest)
            except BaseException:
                self._starting[spec.service] -= 1
                raise
        budget = max(START_TIMEOUT, plan.health.start_period if plan.health else 0.0)
        try:
            pod, restarts = await self._claim(spec, budget)
        finally:
            self._starting[spec.service] -= 1
        instance = KubeInstance(spec, self, pod, restarts, plan.port)
        slots.append(instance)
        if spec.wants_port and plan.port is not None:
            from devenv.runtime.kube_stream import Forwarder

            instance.forwarder = Forwarder(self._session, self._link, cluster.namespace,
                                           lambda: instance.pod, plan.port)
            await instance.forwarder.open()
        return instance

    async def _start_data(self, spec: InstanceSpec, plan: Any, cluster: Cluster
                          ) -> KubeInstance:
        """A data service's one server is its StatefulSet's pod (applied and waited for by
        `_setup`): claimed once it runs, a port-forward to its port behind the engine's
        address (the local services' and devenv's data commands' way in). Nothing is
        applied or scaled: stopping the instance leaves the server running."""
        from devenv.kube.render import DATA_PORTS

        pod, restarts = await self._claim(spec, DATA_TIMEOUT)
        instance = KubeInstance(spec, self, pod, restarts, plan.port, data=True)
        self._slots.setdefault(spec.service, []).append(instance)
        if spec.wants_port:
            from devenv.runtime.kube_stream import Forwarder

            instance.forwarder = Forwarder(self._session, self._link, cluster.namespace,
                                           lambda: instance.pod, DATA_PORTS[plan.data.kind])
            await instance.forwarder.open()
        return instance

    async def _claim(self, spec: InstanceSpec, budget: float,
                     exclude: str | None = None) -> tuple[str, int]:
        """A pod of the service no other slot holds, once its container runs: (name,
        restarts). A pod that cannot start fails at once, with what the cluster says."""
        cluster = self.cluster
        assert cluster is not None
        from devenv.kube.render import selector

        loaded = _project(self.root, self.loaded)
        labels = ",".join(f"{k}={v}" for k, v in selector(loaded.name, spec.service).items())
        mine: str | None = None
        deadline = time.monotonic() + budget
        said = "no pod yet"
        try:
            while True:
                pods = await asyncio.to_thread(cluster.api.pods, cluster.namespace, labels)
                by_name = {p["metadata"]["name"]: p for p in pods}
                if mine is not None and (mine not in by_name or pod_state(
                        by_name[mine], spec.service).deleting):
                    self._claimed.pop(mine, None)
                    mine = None
                if mine is None:
                    free = [n for n, p in sorted(by_name.items())
                            if n not in self._claimed and n != exclude
                            and not pod_state(p, spec.service).deleting]
                    free.sort(key=lambda n: not pod_state(by_name[n], spec.service).running)
                    if free:
                        mine = free[0]
                        self._claimed[mine] = spec.service
                if mine is not None:
                    state = pod_state(by_name[mine], spec.service)
                    if state.problem:  # (the engine shows a start's message only)
                        why = await asyncio.to_thread(self._why, mine, spec.service,
                                                      state.restarts)
                        raise DevenvError(f"{spec.service}: pod {mine} cannot start: "
                                          f"{state.problem}{_said(why)}", details=why,
                                          hint=f"see it: kubectl -n {cluster.namespace} "
                                          f"describe pod {mine}")
                    if state.running:
                        return mine, state.restarts
                    said = f"pod {mine} is {by_name[mine].get('status', {}).get('phase')}"
                if time.monotonic() > deadline:
                    why = await asyncio.to_thread(self._why, mine, spec.service, 0) \
                        if mine else []
                    raise DevenvError(f"{spec.service}: no pod of it ran within "
                                      f"{budget:g}s ({said}){_said(why)}", details=why)
                await asyncio.sleep(POLL)
        except BaseException:
            if mine is not None:
                self._claimed.pop(mine, None)
            raise

    def _why(self, pod: str, container: str, restarts: int) -> list[str]:
        """The pod's last events and log lines (its previous run's after a restart)."""
        cluster = self.cluster
        assert cluster is not None
        lines = [f"event: {e}" for e in cluster.api.events(cluster.namespace, pod)]
        with contextlib.suppress(Exception):
            lines += list(cluster.api.log_lines(cluster.namespace, pod, follow=False, tail=10,
                                                container=container,
                                                previous=restarts > 0))
        return lines

    async def rebind(self, instance: KubeInstance) -> tuple[str, int] | None:
        """Another pod for a slot whose pod went (a rollout, an eviction); None if none runs."""
        self._claimed.pop(instance.pod, None)
        try:
            return await self._claim(instance.spec, REBIND_TIMEOUT, exclude=instance.pod)
        except DevenvError:
            return None

    def release(self, instance: KubeInstance) -> None:
        slots = self._slots.get(instance.spec.service, [])
        if instance in slots:
            slots.remove(instance)
        if self._claimed.get(instance.pod) == instance.spec.service:
            del self._claimed[instance.pod]

    async def scale_down(self, instance: KubeInstance) -> None:
        """The Deployment scaled to the slots left, the stopping one's pod marked to go first
        (its deletion cost), then deleted (if its ReplicaSet has not): one at a time, so
        the ReplicaSet never replaces a pod that was meant to go."""
        cluster = self.cluster
        assert cluster is not None
        api, ns, service = cluster.api, cluster.namespace, instance.spec.service
        async with self._lock(service):
            self.release(instance)
            wanted = len(self._slots.get(service, [])) + self._starting.get(service, 0)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(api.mark_for_deletion, ns, instance.pod)
            with contextlib.suppress(LookupError, DevenvError):
                await asyncio.to_thread(api.scale, ns, service, wanted)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(api.delete_pod, ns, instance.pod,
                                        instance.spec.stop_timeout)

    async def run(self, spec: InstanceSpec, argv: tuple[str, ...], timeout: float,
                  instance: Instance | None = None) -> RunResult:
        """In `instance`'s pod (a command health check); other one-off commands (a dataset's
        script) run on this machine, as on the local runtime."""
        if instance is None:
            if self._local is None:
                from devenv.runtime.local import LocalRuntime

                self._local = LocalRuntime(self.root)
            result: RunResult = await self._local.run(spec, argv, timeout)
            return result
        if not isinstance(instance, KubeInstance) or instance.exited:
            return RunResult(127, "one-off commands run on the kubernetes runtime only in a "
                             "running pod of the service")
        from devenv.runtime.kube_stream import exec_in

        cluster = self.cluster
        assert cluster is not None
        out = bytearray()
        try:
            code = await asyncio.wait_for(exec_in(
                self._session, self._link, cluster.namespace, instance.pod, spec.service,
                with_port(argv, instance.port), lambda _, data: out.extend(data)), timeout)
        except TimeoutError:
            return RunResult(-9, f"timed out after {timeout:g}s")
        except DevenvError as exc:
            return RunResult(127, exc.message)
        return RunResult(code, bytes(out[-65536:]).decode(errors="replace"))

    def exec(self, spec: InstanceSpec, argv: tuple[str, ...], *, tty: bool) -> int:
        """In a running pod of the service, attached to this terminal: `kubectl exec` when
        kubectl is on PATH, else through the API's exec stream."""
        from devenv.kube.render import selector

        loaded = _project(self.root, self.loaded)
        cluster = connect(loaded, ensure=False)
        labels = ",".join(f"{k}={v}" for k, v in selector(loaded.name, spec.service).items())
        running = [p["metadata"]["name"] for p in cluster.api.pods(cluster.namespace, labels)
                   if pod_state(p, spec.service).running]
        if not running:
            raise DevenvError(f"{spec.service} has no running pod",
                              hint=f"start it first: devenv up --services {spec.service}")
        pod = sorted(running)[0]
        kubectl = shutil.which("kubectl")
        if kubectl is not None:
            where = ["--context", cluster.context] if cluster.context else []
            flags = ["-i", "-t"] if tty else ["-i"]
            proc = subprocess.run([kubectl, *where, "-n", cluster.namespace, "exec", *flags,
                                   pod, "-c", spec.service, "--", *argv], check=False)
            return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        return asyncio.run(_exec_attached(cluster, pod, spec.service, argv, tty))

    def address(self, service: str, port: int, backends: Backends) -> Balancer:
        return Balancer(service, port, backends)

    def recover(self) -> int:
        """What a dead engine of this project left on its cluster, deleted by the project's
        labels (its volumes kept); only when this project used a cluster."""
        if not self._marker.exists():
            return 0
        try:
            found = json.loads(self._marker.read_text())
            api = KubeApi.connect(context=found.get("context"))
            done = api.stop(found["namespace"], found["selector"], persist_data=True)
        except Exception:
            return 0
        self._marker.unlink(missing_ok=True)
        return len(done)

    async def close(self) -> None:
        """Stop what still runs, then delete the project's objects by label (the volumes
        too only when the data is discarded)."""
        instances = [i for slots in self._slots.values() for i in slots]
        await asyncio.gather(*(i.stop() for i in instances), return_exceptions=True)
        cluster = self.cluster
        if cluster is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(cluster.api.stop, cluster.namespace, cluster.selector,
                                        self.keep_data)
            if not self.keep_data and _copys_own(self.root, self.loaded, cluster.namespace):
                with contextlib.suppress(Exception):  # (`validate`'s copy: nothing stays)
                    await asyncio.to_thread(cluster.api.delete_namespace, cluster.namespace)
            self._marker.unlink(missing_ok=True)
            self.cluster = None
        if self._session is not None:
            await self._session.close()
            self._session = None


COPY_NAME = re.compile(r"-validate-[0-9a-f]{6}$")  # devenv.candidate's copy_name suffix
COPY_OWNER = "owner.json"  # devenv.candidate's OWNER, beside the copy's folder


def _copys_own(root: Path, loaded: Any, namespace: str) -> bool:
    """Whether `namespace` is a `devenv validate` copy's own (named with the copy's suffix,
    the copy's folder marked by its maker): deleted with its data."""
    found = COPY_NAME.search(loaded.name) if loaded is not None else None
    return found is not None and namespace.endswith(found.group(0)) and \
        (root.parent / COPY_OWNER).is_file()


def _said(why: list[str]) -> str:
    """The pod's last events and log lines, folded into one message."""
    return "; last: " + " | ".join(why[-4:]) if why else ""


def _statefulset_ready(found: dict[str, Any]) -> bool:
    spec, status = found.get("spec") or {}, found.get("status") or {}
    meta = found.get("metadata") or {}
    want = int(spec.get("replicas", 1))
    seen = int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 1))
    return seen and int(status.get("readyReplicas", 0)) >= want


def _manifests(loaded: Any, plan: Any, replicas: int, image_id: str | None,
               pushed: str | None = None) -> list[dict[str, Any]]:
    """The service's rendered manifests (and its own), its Deployment at `replicas`, its pod
    template marked with the built image's id (a new build rolls it out) and running the
    reference `pushed` to the registry, when it was (the one built, whatever changed since)."""
    from devenv.kube.render import render_service

    found = []
    for manifest in render_service(loaded, plan, pushed).all():
        manifest = json.loads(json.dumps(manifest))
        if manifest.get("kind") == "Deployment" and \
                manifest["metadata"]["name"] == plan.name:
            manifest["spec"]["replicas"] = replicas
            if image_id:
                meta = manifest["spec"]["template"].setdefault("metadata", {})
                meta.setdefault("annotations", {})[IMAGE_ANNOTATION] = image_id
        found.append(manifest)
    return found


def _build(service: str, context: Path, dockerfile: str | None, tag: str) -> str:
    """Build with docker-py (as the docker runtime does); the image's id."""
    from devenv.runtime.docker import connect as docker

    if not context.is_dir():
        raise DevenvError(f"{service}: build context {context} is not a folder",
                          hint=f"check services.{service}.build")
    api = docker(60.0)
    said: list[str] = []
    try:
        for chunk in api.build(path=str(context), dockerfile=dockerfile, tag=tag, rm=True,
                               decode=True):
            if "stream" in chunk:
                said += str(chunk["stream"]).splitlines()
            if "error" in chunk:
                raise DevenvError(f"{service}: the image build failed: "
                                  f"{str(chunk['error']).strip()}", details=said[-20:])
        return str(api.inspect_image(tag)["Id"])
    except DevenvError:
        raise
    except Exception as exc:
        raise DevenvError(f"{service}: the image build failed: {exc}",
                          details=said[-20:]) from exc


def _push(service: str, ref: str, url: str | None) -> None:
    """Push `ref` (repository:tag) with docker-py, the registry's login from Docker's own
    config (~/.docker/config.json: `docker login`); a failure says what the registry said."""
    from devenv.runtime.docker import connect as docker

    repo, _, tag = ref.rpartition(":")
    api = docker(PUSH_TIMEOUT)
    try:
        for chunk in api.push(repo, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise _push_failed(service, ref, url, str(chunk["error"]).strip())
    except DevenvError:
        raise
    except Exception as exc:
        raise _push_failed(service, ref, url, str(exc)) from exc


def _push_failed(service: str, ref: str, url: str | None, why: str) -> DevenvError:
    if "HTTP response to HTTPS client" in why:
        hint = (f"the registry at {url} speaks plain HTTP: add it to the Docker Engine's "
                "insecure-registries (/etc/docker/daemon.json), or serve it over HTTPS")
    elif any(word in why.lower() for word in ("unauthorized", "denied", "authentication")):
        hint = f"log in to it first: docker login {url}"
    else:
        hint = (f"check that a registry answers at {url} (registry.url in devenv.yaml) and "
                "that you may push to it (docker login)")
    return DevenvError(f"{service}: cannot push {ref} to the registry at {url}: {why}",
                       hint=hint)


async def _exec_attached(cluster: Cluster, pod: str, container: str, argv: tuple[str, ...],
                         tty: bool) -> int:
    """The API's exec stream, this process's stdin to it and its output to ours."""
    import os

    import aiohttp

    from devenv.runtime.kube_stream import Link, exec_in

    loop = asyncio.get_running_loop()
    stdin: asyncio.Queue[bytes | None] = asyncio.Queue()

    def read() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(0, 65536):
                loop.call_soon_threadsafe(stdin.put_nowait, chunk)
        loop.call_soon_threadsafe(stdin.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()

    def write(channel: int, data: bytes) -> None:
        (sys.stderr if channel == 2 else sys.stdout).buffer.write(data)
        (sys.stderr if channel == 2 else sys.stdout).flush()

    async with aiohttp.ClientSession() as session:
        return await exec_in(session, Link.of(cluster.api.client.configuration),
                             cluster.namespace, pod, container, argv, write, stdin=stdin,
                             tty=tty)
