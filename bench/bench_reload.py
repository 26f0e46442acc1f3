"""Reload benchmark: prints figures, asserts nothing.

Under a steady stream of requests, edit a service's source 20 times and measure the time
from the write to the first response with the new code, and count failed requests:
  - devenv (the service runs `uvicorn app:app`, devenv reloads it; requests via the ingress)
  - `uvicorn app:app --reload` on the same app, requests straight to it
Same app, same edit loop, same run.

Run: make bench   (or .venv/bin/python bench/bench_reload.py [--edits N])
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ENV, devenv, free_ports, pct, running, stop_group

APP = '''VERSION = "v0"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = VERSION.encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''


def write_project(root: Path) -> int:
    """devenv.yaml for one service `api` (the app, under uvicorn) in root/api; the ingress
    port."""
    (root / "api/app.py").write_text(APP)
    ingress, port = free_ports(2)
    (root / "devenv.yaml").write_text(
        f"version: 1\ningress: {{port: {ingress}}}\nservices:\n  api:\n"
        f"    command: uvicorn app:app --host 127.0.0.1 --port $PORT --log-level warning\n"
        f"    path: api\n    port: {port}\n    health: {{http: /}}\n")
    return ingress


class Load:
    """Requests in a loop, new connection each time; records answers. A context manager: the
    loop runs inside the `with` block, and ends with it however the block ends."""

    def __init__(self, port: int, host: str):
        self.port, self.host = port, host
        self.failures = 0
        self.requests = 0
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/", headers={"Host": self.host})
                resp = conn.getresponse()
                body = resp.read().decode()
                conn.close()
                self.requests += 1
                if resp.status != 200:
                    self.failures += 1
                    continue
                self.seen.setdefault(body, time.perf_counter())
            except OSError:
                self.failures += 1
                self.requests += 1
                time.sleep(0.005)


def edit_loop(folder: Path, load: Load, edits: int) -> list[float]:
    delays = []
    app = folder / "app.py"
    for i in range(1, edits + 1):
        version = f"v{i}"
        written = time.perf_counter()
        app.write_text(APP.replace('"v0"', f'"{version}"'))
        deadline = written + 20
        while version not in load.seen and time.perf_counter() < deadline:
            time.sleep(0.002)
        if version in load.seen:
            delays.append(load.seen[version] - written)
        time.sleep(0.4)  # let it settle before the next edit
    return delays


def report(name: str, delays: list[float], load: Load, edits: int) -> None:
    ms = 1000
    print(f"{name:<22} edits served {len(delays)}/{edits}, write→new response: "
          f"p50 {pct(delays, 50) * ms:.0f} ms, p95 {pct(delays, 95) * ms:.0f} ms, "
          f"max {max(delays) * ms:.0f} ms; failed requests {load.failures} "
          f"of {load.requests}" if delays else f"{name}: no edit was served")


def run_devenv(edits: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "api").mkdir()
        ingress = write_project(root)
        with running(root):
            devenv(root, "up")
            with Load(ingress, "api.localhost") as load:
                time.sleep(0.5)
                delays = edit_loop(root / "api", load, edits)
        report("devenv (replace)", delays, load, edits)


def run_uvicorn_reload(edits: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "app.py").write_text(APP)
        (port,) = free_ports(1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--reload", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"], cwd=folder, env=ENV,
            start_new_session=True, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 15
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            with Load(port, "x") as load:
                time.sleep(0.5)
                delays = edit_loop(folder, load, edits)
        finally:
            stop_group(proc)  # the reloader and the server it started
        report("uvicorn --reload", delays, load, edits)


def big_repository(files: int) -> None:
    """A service folder of `files` files (100 per folder): how long `up` takes, and how
    soon after it an edit is live."""
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        api = root / "api"
        api.mkdir()
        for d in range(files // 100):
            folder = api / "src" / f"pkg{d // 50}" / f"mod{d}"
            folder.mkdir(parents=True)
            for f in range(100):
                (folder / f"f{f}.py").write_text("")
        ingress = write_project(root)
        with running(root):
            t0 = time.perf_counter()
            devenv(root, "up")
            up = time.perf_counter() - t0
            with Load(ingress, "api.localhost") as load:
                delays = edit_loop(api, load, 5)
                engine = psutil.Process(int((root / ".devenv/run/engine.pid").read_text()))
                rss = engine.memory_info().rss
        print(f"{files:,}-file service: up {up:.2f}s; first edit live "
              f"{delays[0] * 1000:.0f} ms after up returned its write, "
              f"p50 of 5 edits {pct(delays, 50) * 1000:.0f} ms; engine RSS "
              f"{rss / 2**20:.0f} MiB; failed requests {load.failures}")


def main() -> None:
    edits = int(sys.argv[sys.argv.index("--edits") + 1]) if "--edits" in sys.argv else 20
    print(f"reload benchmark: {edits} edits each, one client looping requests")
    run_devenv(edits)
    run_uvicorn_reload(edits)
    big_repository(100_000)


if __name__ == "__main__":
    main()
