"""The typed client of the engine's control API (stdlib only, so the CLI starts fast)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devenv.core.errors import DevenvError
from devenv.core.paths import StateDir
from devenv.runtime.base import InstanceSpec
from devenv.wire import (
    EnvironmentStatus,
    LoadResult,
    LogLine,
    OpResult,
    Progress,
    SnapshotSummary,
    StopResult,
    UpResult,
    from_json,
)

START_TIMEOUT = 15.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None):
        super().__init__("engine", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class EngineNotRunning(DevenvError):
    def __init__(self, root: Path):
        super().__init__(f"no environment is running for {root}",
                         hint="start it with `devenv up`")


class Client:
    def __init__(self, root: Path):
        self.root = root
        self.state = StateDir(root)

    # ---- plumbing

    def _request(self, method: str, path: str, body: Any = None, timeout: float | None = 30.0
                 ) -> http.client.HTTPResponse:
        conn = _UnixConnection(self.state.socket, timeout)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload else {}
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise EngineNotRunning(self.root) from exc
        if response.status >= 400:
            raw = response.read()
            try:
                data = json.loads(raw or b"{}")
            except ValueError:
                raise DevenvError(
                    f"the engine answered {response.status}: {raw[:200].decode(errors='replace')}",
                    hint="the running engine may be older than this devenv; restart it with "
                    "`devenv stop --persist-data` and `devenv up`") from None
            error = DevenvError(data.get("error", f"engine answered {response.status}"),
                                hint=data.get("hint"), details=data.get("details"))
            error.exit_code = int(data.get("exit_code", 1))
            raise error
        return response

    def _json(self, method: str, path: str, body: Any = None, timeout: float | None = 30.0
              ) -> Any:
        return json.loads(self._request(method, path, body, timeout).read())

    def _stream(self, method: str, path: str, body: Any = None) -> Iterator[dict[str, Any]]:
        response = self._request(method, path, body, timeout=None)
        for raw in response:
            if raw.strip():
                yield json.loads(raw)

    # ---- the API

    def running(self) -> bool:
        try:
            self._json("GET", "/v1/ping", timeout=2.0)
            return True
        except (EngineNotRunning, OSError):
            return False

    def status(self, resources: bool = False) -> EnvironmentStatus:
        return from_json(EnvironmentStatus, self._json(
            "GET", "/v1/status" + ("?resources=1" if resources else "")))

    def up(self, services: list[str], profile: str | None, watch: bool = True
           ) -> Iterator[Progress | UpResult]:
        """Progress as it happens, ending with the result."""
        # ${VAR} in devenv.yaml means the caller's environment, not the engine's
        for item in self._stream("POST", "/v1/up", {"services": services, "profile": profile,
                                                    "environ": dict(os.environ),
                                                    "watch": watch}):
            yield from_json(UpResult, item) if item.get("type") == "done" \
                else from_json(Progress, item)

    def restart(self, services: list[str]) -> OpResult:
        return from_json(OpResult, self._json("POST", "/v1/restart", {"services": services},
                                              timeout=None))

    def scale(self, counts: dict[str, int]) -> OpResult:
        return from_json(OpResult, self._json("POST", "/v1/scale", {"counts": counts},
                                              timeout=None))

    def stop(self, persist_data: bool) -> StopResult:
        result = from_json(StopResult, self._json("POST", "/v1/stop",
                                                  {"persist_data": persist_data}, timeout=None))
        deadline = time.monotonic() + 10
        while self.state.pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # the engine exits right after answering
        return result

    def exec_target(self, service: str) -> tuple[str, InstanceSpec]:
        """The runtime and spec the running environment gives `devenv exec SERVICE`."""
        data = self._json("GET", "/v1/exec/" + urllib.parse.quote(service, safe=""))
        return data["runtime"], from_json(InstanceSpec, data["spec"])

    def snapshot_save(self, name: str) -> SnapshotSummary:
        return from_json(SnapshotSummary, self._json("POST", "/v1/snapshots", {"name": name},
                                                     timeout=None))

    def snapshot_restore(self, name: str) -> SnapshotSummary:
        return from_json(SnapshotSummary, self._json(
            "POST", "/v1/snapshots/restore", {"name": name}, timeout=None))

    def data_load(self, dataset: str) -> LoadResult:
        return from_json(LoadResult, self._json("POST", "/v1/data/load", {
            "dataset": dataset, "environ": dict(os.environ)}, timeout=None))

    def data_reset(self) -> list[str]:
        result: list[str] = self._json("POST", "/v1/data/reset", {}, timeout=None)["reset"]
        return result

    def logs(self, services: list[str], *, follow: bool, since: float | None, tail: int | None,
             startup: bool, verbose: bool) -> Iterator[LogLine]:
        query: list[tuple[str, str]] = [("service", s) for s in services]
        if follow:
            query.append(("follow", "1"))
        if since is not None:
            query.append(("since", str(since)))
        if tail is not None:
            query.append(("tail", str(tail)))
        if startup:
            query.append(("startup", "1"))
        if verbose:
            query.append(("verbose", "1"))
        for item in self._stream("GET", "/v1/logs?" + urllib.parse.urlencode(query)):
            yield from_json(LogLine, item)

    # ---- starting the engine

    def ensure_engine(self) -> None:
        """Reach the project's engine, starting it when none runs."""
        if self.running():
            return
        self.state.ensure()
        with open(self.state.engine_log, "a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "devenv.engine", str(self.root)], cwd=self.root,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.running():
                return
            code = proc.poll()
            if code not in (None, 0):
                break
            time.sleep(0.02)
        tail = self.state.engine_log.read_text(errors="replace").splitlines()[-15:]
        raise DevenvError("the engine did not start", details=tail,
                          hint=f"see {self.state.engine_log}")
