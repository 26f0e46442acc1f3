"""A FAKE Kubernetes API server: an aiohttp app with just the endpoints devenv's kubernetes
runtime calls, so its apply, rollout, log, scale and stop logic is tested without a cluster
(none can run here). It is not Kubernetes: no controllers, no validation, no merge rules but
"the last apply wins". A test drives what a controller would do (a Deployment's status, pods,
log lines) through `FakeKubeApi`'s methods, or turns on `controller=True`: then applying or
scaling a Deployment makes (or removes) its pods, each "running" a tiny HTTP server in this
process (what a port-forward reaches), ready at once unless `failing[service]` names the
reason its container waits with; a StatefulSet is ready at once with its claim made.

Streams speak the API's websocket channel protocol (`v4.channel.k8s.io`): `portforward` to
the pod's server, `exec` running the command as a local process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from typing import Any

from aiohttp import WSMsgType, web

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")


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
            self.ended.update(self.lines)  # (streams still open end)
            await self._notify()
            for runner, _ in list(self.servers.values()):
                await runner.cleanup()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(end(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def set_status(self, path: str, **status: Any) -> None:
        self.objects[path]["status"] = status

    def add_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        self.objects[f"/api/v1/namespaces/{namespace}/pods/{name}"] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels}}
        self.lines.setdefault(name, [])

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
        if found is not None:
            await found[0].cleanup()

    def _statefulset(self, body: dict[str, Any]) -> None:
        meta, spec = body["metadata"], body["spec"]
        body["status"] = {"observedGeneration": meta["generation"],
                          "replicas": spec["replicas"], "readyReplicas": spec["replicas"]}
        for claim in spec.get("volumeClaimTemplates") or []:
            name = f"{claim['metadata']['name']}-{meta['name']}-0"
            self.objects.setdefault(
                f"/api/v1/namespaces/{meta['namespace']}/persistentvolumeclaims/{name}",
                {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": name, "namespace": meta["namespace"],
                              "labels": claim["metadata"].get("labels") or {}}})

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
        if path.endswith("/portforward"):
            return await self._portforward(request, path.rsplit("/", 2)[-2])
        if path.endswith("/exec"):
            return await self._exec(request)
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
                self._statefulset(body)
            if self.controller:
                await self._reconcile(path)
            return web.json_response(body)
        if request.method == "GET" and path.endswith("/log"):
            return await self._log(request, path.rsplit("/", 2)[-2])
        if request.method == "GET" and path in self.objects:
            return web.json_response(self.objects[path])
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
                    if "/deployments" in k:  # (its pods go with it: garbage collection)
                        name, ns = k.rsplit("/", 1)[1], k.split("/")[4]
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
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)

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
        status = {"status": "Success"} if code == 0 else {
            "status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        feeder.cancel()
        await ws.close()
        return ws


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


def _collection(path: str) -> bool:
    """/api/v1/namespaces/NS/pods (a collection) or /api/v1/namespaces/NS/pods/NAME."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    return len(rest) % 2 == 1


def _status(code: int, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "code": code, "message": message},
                             status=code)
