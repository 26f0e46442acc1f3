"""The typed client of the engine's control API (stdlib only, so the CLI starts fast)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv.core.errors import DevenvError
from devenv.core.paths import StateDir, socket_address
from devenv.wire import (
    DebugResult,
    EnvironmentStatus,
    LoadResult,
    LogLine,
    MigrateResult,
    OpResult,
    ProfileResult,
    ProfileTick,
    Progress,
    ResetResult,
    SnapshotSummary,
    StopResult,
    Trace,
    TraceSummary,
    UpResult,
    ValidationResult,
    from_json,
)

if TYPE_CHECKING:
    from devenv.runtime.base import InstanceSpec

START_TIMEOUT = 15.0


class EngineGone(DevenvError):
    """The engine's answer was cut off, or never came: it exited or was killed."""

    def __init__(self) -> None:
        super().__init__("the engine stopped answering (it exited or was killed)",
                         hint="see `devenv status`; `devenv up` starts it again")


class EngineTimeout(DevenvError):
    def __init__(self, root: Path) -> None:
        super().__init__("the engine did not answer in time",
                         hint=f"it may be stuck; see {StateDir(root).engine_log}, and "
                         "`devenv stop` then `devenv up` to start afresh")


def _unreadable(what: str) -> DevenvError:
    return DevenvError(f"cannot read the engine's answer: {what}",
                       hint="the running engine may be older than this devenv; restart it "
                       "with `devenv stop --persist-data` and `devenv up`")


class _Response:
    """One HTTP/1.1 answer read off the control socket: the status, then the body (sized,
    chunked, or to the end of the connection), whole or line by line. Plain sockets, not
    http.client: its imports cost more than the rest of a `devenv status`."""

    def __init__(self, sock: socket.socket):
        """Reads the status and headers; an answer that is empty or cut off (the engine
        died) raises EngineGone. (Socket errors are the caller's to translate.)"""
        self._sock = sock
        self._file = sock.makefile("rb")
        try:
            parts = self._file.readline(65537).split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise EngineGone()
            self.status = int(parts[1])
            self.headers: dict[str, str] = {}
            while (line := self._file.readline(65537)) not in (b"\r\n", b"\n"):
                if not line:
                    raise EngineGone()  # cut off in the headers
                name, _, value = line.decode("latin-1").partition(":")
                self.headers[name.strip().lower()] = value.strip()
        except BaseException:
            self.close()
            raise

    def _chunks(self) -> Iterator[bytes]:
        """The body, as it comes; cut off (the engine died): EngineGone."""
        try:
            yield from self._raw_chunks()
        except TimeoutError:
            raise  # (the caller names the engine's folder)
        except (OSError, ValueError) as exc:  # reset, or garbage where a chunk size goes
            raise EngineGone() from exc

    def _raw_chunks(self) -> Iterator[bytes]:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = self._file.readline(1024)
                if not line:
                    raise EngineGone()  # cut off before the last chunk
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                chunk = self._file.read(size)
                if len(chunk) < size:
                    raise EngineGone()
                yield chunk
                self._file.readline(3)
        elif "content-length" in self.headers:
            size = int(self.headers["content-length"])
            body = self._file.read(size)
            if len(body) < size:
                raise EngineGone()  # cut off mid-answer
            yield body
        else:
            while chunk := self._file.read1(65536):
                yield chunk

    def read(self) -> bytes:
        try:
            return b"".join(self._chunks())
        finally:
            self.close()

    def lines(self) -> Iterator[bytes]:
        try:
            pending = b""
            for chunk in self._chunks():
                *lines, pending = (pending + chunk).split(b"\n")
                yield from lines
            if pending:
                yield pending
        finally:
            self.close()

    def close(self) -> None:
        self._file.close()
        self._sock.close()


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
                 ) -> _Response:
        try:
            return self._send(method, path, body, timeout)
        except TimeoutError as exc:
            raise EngineTimeout(self.root) from exc

    def _send(self, method: str, path: str, body: Any, timeout: float | None) -> _Response:
        payload = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            with socket_address(self.state.socket) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise EngineNotRunning(self.root) from exc
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise DevenvError(f"cannot reach the engine at {self.state.socket}: "
                              f"{exc.strerror or exc}",
                              hint="`devenv doctor` checks the machine") from exc
        try:
            sock.sendall(head.encode() + payload)
            response = _Response(sock)
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:  # reset, broken pipe: the engine went away as we asked
            sock.close()
            raise EngineGone() from exc
        if response.status >= 400:
            raw = response.read()
            try:
                data = json.loads(raw or b"{}")
                if not isinstance(data, dict):
                    raise ValueError
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
        response = self._request(method, path, body, timeout)
        try:
            raw = response.read()
        except TimeoutError as exc:
            raise EngineTimeout(self.root) from exc
        try:
            return json.loads(raw)
        except ValueError:
            raise _unreadable(raw[:200].decode(errors="replace") or "nothing") from None

    def _stream(self, method: str, path: str, body: Any = None) -> Iterator[dict[str, Any]]:
        for raw in self._request(method, path, body, timeout=None).lines():
            if raw.strip():
                try:
                    item = json.loads(raw)
                except ValueError:
                    raise _unreadable(raw[:200].decode(errors="replace")) from None
                if not isinstance(item, dict):
                    raise _unreadable(raw[:200].decode(errors="replace"))
                yield item

    # ---- the API

    def running(self) -> bool:
        try:
            self._json("GET", "/v1/ping", timeout=2.0)
            return True
        except (EngineNotRunning, EngineGone, EngineTimeout, OSError):
            return False

    def status(self, resources: bool = False) -> EnvironmentStatus:
        return from_json(EnvironmentStatus, self._json(
            "GET", "/v1/status" + ("?resources=1" if resources else "")))

    def up(self, services: list[str], profile: str | None, watch: bool = True,
           rerun: list[str] | None = None) -> Iterator[Progress | UpResult]:
        """Progress as it happens, ending with the result."""
        # ${VAR} in devenv.yaml means the caller's environment, not the engine's
        for item in self._stream("POST", "/v1/up", {"services": services, "profile": profile,
                                                    "environ": dict(os.environ),
                                                    "watch": watch, "rerun": rerun or []}):
            yield from_json(UpResult, item) if item.get("type") == "done" \
                else from_json(Progress, item)

    def restart(self, services: list[str]) -> OpResult:
        return from_json(OpResult, self._json("POST", "/v1/restart", {"services": services},
                                              timeout=None))

    def scale(self, counts: dict[str, int]) -> OpResult:
        return from_json(OpResult, self._json("POST", "/v1/scale", {"counts": counts},
                                              timeout=None))

    def debug(self, service: str, wait: bool, off: bool, allow_root: bool = False
              ) -> DebugResult:
        from urllib.parse import quote

        return from_json(DebugResult, self._json(
            "POST", "/v1/debug/" + quote(service, safe=""),
            {"wait": wait, "off": off, "allow_root": allow_root}, timeout=None))

    def validate(self, services: list[str], timeout: float) -> ValidationResult:
        """The checks, which the engine ends within `timeout` seconds (and a grace)."""
        return from_json(ValidationResult, self._json(
            "POST", "/v1/validate", {"services": services, "timeout": timeout},
            timeout=timeout + 15))

    def migrate(self) -> MigrateResult:
        return from_json(MigrateResult, self._json("POST", "/v1/migrate",
                                                   {"environ": dict(os.environ)}, timeout=None))

    def stop(self, persist_data: bool, *, snapshot: bool = True,
             timeout: float | None = None) -> StopResult:
        """`snapshot=False` (with `persist_data=False`): the data goes without the automatic
        snapshot (`validate`'s copy: its folder, volumes and claims)."""
        result = from_json(StopResult, self._json(
            "POST", "/v1/stop", {"persist_data": persist_data, "snapshot": snapshot},
            timeout=timeout))
        deadline = time.monotonic() + 10
        while self.state.pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # the engine exits right after answering
        return result

    def exec_target(self, service: str) -> tuple[str, InstanceSpec]:
        """The runtime and spec the running environment gives `devenv exec SERVICE`."""
        from urllib.parse import quote

        from devenv.runtime.base import InstanceSpec

        data = self._json("GET", "/v1/exec/" + quote(service, safe=""))
        return data["runtime"], from_json(InstanceSpec, data["spec"])

    def profile(self, service: str, *, seconds: float, replica: int | None,
                formats: list[str], memory: bool, allow_root: bool = False
                ) -> Iterator[ProfileTick | ProfileResult]:
        """A tick a second while the sampler runs, then the result. No deadline: the answer
        takes the profile's duration; closing the iterator early (Ctrl-C) hangs up, which
        stops the sampler."""
        for item in self._stream("POST", "/v1/profile", {
                "service": service, "seconds": seconds, "replica": replica,
                "formats": formats, "memory": memory, "allow_root": allow_root}):
            kind = item.get("type")
            if kind == "error":
                info = item.get("error") or {}
                error = DevenvError(info.get("message", "the profile failed"),
                                    hint=info.get("hint"), details=info.get("details"))
                error.exit_code = int(info.get("exit_code", 1))
                raise error
            yield from_json(ProfileResult, item) if kind == "done" \
                else from_json(ProfileTick, item)

    def snapshot_save(self, name: str) -> SnapshotSummary:
        return from_json(SnapshotSummary, self._json("POST", "/v1/snapshots", {"name": name},
                                                     timeout=None))

    def snapshot_restore(self, name: str) -> SnapshotSummary:
        return from_json(SnapshotSummary, self._json(
            "POST", "/v1/snapshots/restore", {"name": name}, timeout=None))

    def data_load(self, dataset: str) -> LoadResult:
        return from_json(LoadResult, self._json("POST", "/v1/data/load", {
            "dataset": dataset, "environ": dict(os.environ)}, timeout=None))

    def data_reset(self) -> ResetResult:
        return from_json(ResetResult, self._json("POST", "/v1/data/reset", {}, timeout=None))

    def logs(self, services: list[str], *, follow: bool, since: float | None, tail: int | None,
             startup: bool, verbose: bool, all_starts: bool = False) -> Iterator[LogLine]:
        from urllib.parse import urlencode

        query: list[tuple[str, str]] = [("service", s) for s in services]
        if follow:
            query.append(("follow", "1"))
        if since is not None:
            query.append(("since", str(since)))
        if tail is not None:
            query.append(("tail", str(tail)))
        if startup:
            query.append(("startup", "1"))
        if all_starts:
            query.append(("all", "1"))
        if verbose:
            query.append(("verbose", "1"))
        for item in self._stream("GET", "/v1/logs?" + urlencode(query)):
            yield from_json(LogLine, item)

    def traces(self, *, services: list[str], since: float | None, min_duration: float | None,
               errors: bool, limit: int, follow: bool, spans: bool
               ) -> Iterator[TraceSummary | Trace]:
        """Recent traces, oldest first (`spans`: each with its spans); `follow`: then each
        new one as it completes, until the engine stops."""
        from urllib.parse import urlencode

        query: list[tuple[str, str]] = [("service", s) for s in services]
        query += [("limit", str(limit))] + [(k, "1") for k, on in (
            ("errors", errors), ("follow", follow), ("spans", spans)) if on]
        query += [(k, str(v)) for k, v in (("since", since), ("min_duration", min_duration))
                  if v is not None]
        for item in self._stream("GET", "/v1/traces?" + urlencode(query)):
            yield from_json(Trace if spans else TraceSummary, item)

    def trace(self, trace_id: str) -> Trace:
        from urllib.parse import quote

        return from_json(Trace, self._json("GET", "/v1/traces/" + quote(trace_id, safe="")))

    # ---- starting the engine

    def ensure_engine(self) -> None:
        """Reach the project's engine, starting it when none runs. While it starts, a marker
        says so, so that a `stop` meanwhile waits for it instead of missing it."""
        if self.running():
            return
        self.state.ensure()
        starting = self.state.run / "starting"
        starting.write_text(str(os.getpid()))
        try:
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
        finally:
            starting.unlink(missing_ok=True)
        tail = self.state.engine_log.read_text(errors="replace").splitlines()[-15:]
        raise DevenvError("the engine did not start", details=tail,
                          hint=f"see {self.state.engine_log}")

    def reachable(self) -> bool:
        """Running, or being started by another devenv right now (then wait for it)."""
        if self.running():
            return True
        starting = self.state.run / "starting"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                pid = int(starting.read_text())
                os.kill(pid, 0)
            except (OSError, ValueError):
                return self.running()  # no start in progress (or it just finished)
            if self.running():
                return True
            time.sleep(0.02)
        return self.running()
