"""Load generator benchmark: prints figures, asserts nothing.

Against the same nginx `return 200` on 127.0.0.1, with the same 32 connections for the same
duration, in the same run: wrk -t1, `devenv load-test`, and locust (FastHttpUser, one
process, headless). Prints each one's requests a second and devenv's ratio to wrk's and to
locust's. A tool that is not installed (`make tools` installs nginx, wrk; locust comes with
the venv's pip) is skipped, saying why.

Run: make bench   (or .venv/bin/python bench/bench_loadtest.py [--seconds N])
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ENV, free_ports, stop_group

NGINX_CONF = """worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path {root}; proxy_temp_path {root}; fastcgi_temp_path {root};
  uwsgi_temp_path {root}; scgi_temp_path {root};
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }}
}}
"""
LOCUSTFILE = """from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser


class Hit(FastHttpUser):
    wait_time = constant(0)

    @task
    def hit(self):
        self.client.get("/")
"""


def nginx_bin() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def wrk(url: str, seconds: int) -> float | None:
    if not shutil.which("wrk"):
        print("wrk: skipped (not installed: `make tools`, or apt-get install wrk)")
        return None
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", url], text=True,
                         capture_output=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("Requests/sec"))
    return float(line.split()[1])


def devenv(url: str, seconds: int) -> float:
    out = subprocess.run([sys.executable, "-m", "devenv", "load-test", "--url", url,
                          "--connections", "32", "--duration", f"{seconds}s", "--json"],
                         env=ENV, text=True, capture_output=True, check=True).stdout
    doc = json.loads(out)
    print(f"devenv: {doc['requests']} requests, p50 {doc['latency_ms']['p50']} ms, "
          f"p99 {doc['latency_ms']['p99']} ms, {doc['generator']['workers']} workers")
    return float(doc["rps"])


def locust(url: str, seconds: int, work: Path) -> float | None:
    exe = Path(sys.executable).parent / "locust"
    if not exe.exists():
        print("locust: skipped (not installed: .venv/bin/pip install locust)")
        return None
    (work / "locustfile.py").write_text(LOCUSTFILE)
    subprocess.run([str(exe), "-f", str(work / "locustfile.py"), "--headless", "-u", "32",
                    "-r", "32", "-t", f"{seconds}s", "-H", url.rstrip("/"),
                    "--csv", str(work / "l"),
                    "--only-summary"], cwd=work, env=ENV, capture_output=True, check=False,
                   timeout=seconds + 60)
    with (work / "l_stats.csv").open() as fh:
        row = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    return float(row["Requests/s"])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=5)
    args = p.parse_args()
    nginx = nginx_bin()
    if not nginx:
        print("bench_loadtest: skipped (nginx not installed: `make tools`, or apt-get install "
              "nginx-light)")
        return 0
    port = free_ports(1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=port))
        server = subprocess.Popen([nginx, "-c", str(root / "nginx.conf"), "-p", str(root)],
                                  start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 10
            while not (root / "nginx.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            w = wrk(url, args.seconds)
            d = devenv(url, args.seconds)
            lo = locust(url, args.seconds, root)
        finally:
            stop_group(server)  # type: ignore[arg-type]
    print(f"nginx return 200, 32 connections, {args.seconds}s each:")
    print(f"  wrk -t1:        {w:>10,.0f} req/s" if w else "  wrk: -")
    print(f"  devenv:         {d:>10,.0f} req/s")
    print(f"  locust (fast):  {lo:>10,.0f} req/s" if lo else "  locust: -")
    if w:
        print(f"  devenv / wrk:    {d / w:.2f}x (goal: at least 0.5x)")
    if lo:
        print(f"  devenv / locust: {d / lo:.1f}x (goal: at least 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
