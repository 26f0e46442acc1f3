"""A FAKE Kubernetes API server: an aiohttp app with just the endpoints devenv's kubernetes
runtime calls, so its apply, rollout, log, scale and stop logic is tested without a cluster
(none can run here). It is not Kubernetes: no controllers, no validation, no merge rules but
"the last apply wins". A test drives what a controller would do (a Deployment's status, pods,
log lines) through `FakeKubeApi`'s methods.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for part in filter(None, selector.split(",")):
        key, _, value = part.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKubeApi:
    """The fake server, run in a thread of its own (the official client is synchronous)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}  # by collection path + "/" + name
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, query
        self.logs: dict[str, asyncio.Queue[str | None]] = {}
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
        for queue in list(self.logs.values()):  # (streams still open end)
            self._loop.call_soon_threadsafe(queue.put_nowait, None)
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def set_status(self, path: str, **status: Any) -> None:
        self.objects[path]["status"] = status

    def add_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        self.objects[f"/api/v1/namespaces/{namespace}/pods/{name}"] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels}}
        self._loop.call_soon_threadsafe(self.logs.setdefault, name, asyncio.Queue())

    def say(self, pod: str, line: str | None) -> None:
        """A line the pod writes (None: the pod ended)."""
        def put() -> None:
            self.logs.setdefault(pod, asyncio.Queue()).put_nowait(line)
        self._loop.call_soon_threadsafe(put)

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
        if request.method == "PATCH" and path.endswith("/scale"):
            obj = self.objects.get(path.removesuffix("/scale"))
            if obj is None:
                return _status(404, "not found")
            body = await request.json()
            obj["spec"]["replicas"] = body["spec"]["replicas"]
            obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
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
            return web.json_response(body)
        if request.method == "GET" and path.endswith("/log"):
            return await self._log(request, path.rsplit("/", 2)[-2])
        if request.method == "GET" and path in self.objects:
            return web.json_response(self.objects[path])
        if request.method in ("GET", "DELETE"):
            prefix = path + "/"
            found = [k for k, v in self.objects.items() if k.startswith(prefix)
                     and "/" not in k[len(prefix):]
                     and _matches(v, query.get("labelSelector", ""))]
            if request.method == "DELETE" and path not in self.objects:
                for k in found:
                    del self.objects[k]
            elif request.method == "DELETE":
                found = [path]
                del self.objects[path]
            return web.json_response({"kind": "List", "items": [
                self.objects.get(k, {}) for k in found]})
        return _status(404, "not found")

    async def _log(self, request: web.Request, pod: str) -> web.StreamResponse:
        queue = self.logs.setdefault(pod, asyncio.Queue())
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        while (line := await queue.get()) is not None:
            await response.write(line.encode() + b"\n")
        await response.write_eof()
        return response


def _status(code: int, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "code": code, "message": message},
                             status=code)
