"""Data services on real PostgreSQL and Redis: datasets, snapshots, reset, persistence."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import psycopg
import pytest
import redis

from conftest import Project, free_ports
from devenv.data.postgres_load import split_sql
from devenv.data.snapshots import SnapshotStore


@pytest.fixture
def shop(project: Project) -> Project:
    db, cache, api = free_ports(3)
    data = project.root / "data"
    data.mkdir()
    (data / "schema.sql").write_text(
        "-- the catalog\n"
        "CREATE TABLE product (id int PRIMARY KEY, name text NOT NULL, price numeric);\n"
        "INSERT INTO product VALUES (1, 'Green tea', 3.50), (2, 'Coffee; dark', 4.20);\n")
    (data / "more.sql").write_text("INSERT INTO product VALUES (3, 'Cocoa', 2.10);\n\n"
                                   "INSERT INTO product VALUES\n  (4, NULL, 1.0);\n")
    (data / "cache.redis").write_text('# carts\nSET greeting "hello world"\n'
                                      "HSET cart:1 product 1 qty 2\n")
    (data / "bad.redis").write_text("SET a 1\nHSETT cart:2 product 3\n")
    project.write(f"""\
        version: 1
        ingress: {{port: {project.ingress_port}}}
        services:
          db:
            kind: postgres
            port: {db}
            databases: [shop, orders]
            password: s3cret-pw
          cache:
            kind: redis
            port: {cache}
          api:
            command: python svc.py
            port: {api}
            depends_on:
              db: {{database: orders}}
              cache: healthy
        datasets:
          demo:
            files:
              db/shop: [data/schema.sql]
              cache: [data/cache.redis]
          broken-sql:
            files:
              cache: [data/cache.redis]
              db/shop: [data/more.sql]
          broken-redis:
            files:
              db/shop: [data/schema.sql]
              cache: [data/bad.redis]
        profiles:
          qa:
            datasets: [demo]
        snapshots: {{keep_automatic: 2}}
        """)
    return project


def sql(project: Project, query: str) -> list[tuple[object, ...]]:
    port = project.service("db")["url"].rsplit(":", 1)[1].split("/")[0]
    with psycopg.connect(f"postgresql://devenv:s3cret-pw@127.0.0.1:{port}/shop") as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


def rds(project: Project) -> redis.Redis:
    port = int(project.service("cache")["url"].rsplit(":", 1)[1].split("/")[0])
    return redis.Redis(port=port, password="devpass")


def products(project: Project) -> list[str]:
    return [r[0] for r in sql(project, "SELECT name FROM product ORDER BY id")]  # type: ignore[misc]


def test_dependents_get_urls_of_real_servers(shop: Project) -> None:
    shop.up()
    api = shop.service("api")["url"]
    env = shop.get(f"{api}/env")[1]
    assert env["DATABASE_URL"].endswith("/orders") and env["DB_URL"] == env["DATABASE_URL"]
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("orders",)
    assert redis.Redis.from_url(env["REDIS_URL"]).ping()
    status = shop.devenv("status", check=True).stdout
    assert "s3cret-pw" not in status and "postgresql://devenv:***@" in status
    shown = shop.devenv("config", "show", check=True).stdout
    assert "s3cret-pw" not in shown and "password: '********'" in shown
    assert shop.devenv("config", "get", "services.db.password", check=True).stdout == "********\n"


def test_dataset_loads_and_a_broken_one_changes_nothing(shop: Project) -> None:
    shop.up()
    assert "loaded dataset demo" in shop.devenv("data", "load", "--dataset", "demo",
                                                check=True).stdout
    assert products(shop) == ["Green tea", "Coffee; dark"]
    assert rds(shop).hgetall("cart:1") == {b"product": b"1", b"qty": b"2"}

    rds(shop).delete("greeting")
    broken = shop.devenv("data", "load", "--dataset", "broken-sql")
    assert broken.returncode == 1
    assert "data/more.sql:3: null value in column \"name\"" in broken.stderr
    assert products(shop) == ["Green tea", "Coffee; dark"]  # row 3 was not kept
    assert rds(shop).get("greeting") is None  # the redis part did not run either

    sql(shop, "DROP TABLE product")
    bad = shop.devenv("data", "load", "--dataset", "broken-redis")
    assert bad.returncode == 1 and "data/bad.redis:2: HSETT" in bad.stderr
    with pytest.raises(psycopg.errors.UndefinedTable):
        sql(shop, "SELECT 1 FROM product")  # the SQL part was rolled back
    assert rds(shop).get("a") is None


def test_snapshot_restore_brings_both_stores_back_exactly(shop: Project) -> None:
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    shop.devenv("snapshot", "save", "before-bug", check=True)
    sql(shop, "DELETE FROM product WHERE id = 1; UPDATE product SET price = 0")
    rds(shop).flushall()
    shop.devenv("snapshot", "restore", "before-bug", check=True)
    assert sql(shop, "SELECT id, name, price::text FROM product ORDER BY id") == [
        (1, "Green tea", "3.50"), (2, "Coffee; dark", "4.20")]
    assert rds(shop).get("greeting") == b"hello world"
    listed = json.loads(shop.devenv("snapshot", "list", "--json", check=True).stdout)
    (snap,) = listed
    assert snap["name"] == "before-bug" and snap["datasets"] == ["demo"]
    assert snap["services"]["db"]["kind"] == "postgres"
    assert snap["services"]["db"]["version"].startswith("18")
    manifest = json.loads((shop.root / ".devenv/snapshots/before-bug/manifest.json")
                          .read_text())
    assert all(len(f["sha256"]) == 64 for s in manifest["services"].values()
               for f in s["files"].values())


def test_reset_gives_fresh_empty_data(shop: Project) -> None:
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    shop.devenv("data", "reset", check=True)
    with pytest.raises(psycopg.errors.UndefinedTable):
        sql(shop, "SELECT 1 FROM product")
    assert rds(shop).dbsize() == 0
    assert shop.service("api")["state"] == "healthy"


def test_persist_data_across_stop_and_up(shop: Project) -> None:
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    assert "data kept" in shop.devenv("stop", "--persist-data", check=True).stdout
    shop.up()
    assert products(shop) == ["Green tea", "Coffee; dark"]
    assert rds(shop).get("greeting") == b"hello world"


def test_stop_discards_data_but_keeps_an_automatic_snapshot(shop: Project) -> None:
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    stopped = shop.devenv("stop", check=True).stdout
    assert "automatic snapshot" in stopped
    shop.up()
    with pytest.raises(psycopg.errors.UndefinedTable):
        sql(shop, "SELECT 1 FROM product")
    (auto,) = json.loads(shop.devenv("snapshot", "list", "--json", check=True).stdout)
    assert auto["automatic"]
    shop.devenv("snapshot", "restore", auto["name"], check=True)
    assert products(shop) == ["Green tea", "Coffee; dark"]
    # only the newest `keep_automatic` (2) automatic snapshots are kept
    shop.devenv("stop", check=True)
    shop.up()
    shop.devenv("stop", check=True)
    shop.up()
    shop.devenv("stop", check=True)
    store = SnapshotStore(shop.root / ".devenv/snapshots")
    assert len([s for s in store.all() if s.automatic]) == 2


def test_damaged_snapshot_is_refused_and_data_is_untouched(shop: Project) -> None:
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    shop.devenv("snapshot", "save", "good", check=True)
    base = shop.root / ".devenv/snapshots/good/db/base.tar"
    base.write_bytes(base.read_bytes()[: base.stat().st_size // 2])
    sql(shop, "INSERT INTO product VALUES (9, 'Matcha', 9)")
    refused = shop.devenv("snapshot", "restore", "good")
    assert refused.returncode == 1
    assert "snapshot 'good' is damaged" in refused.stderr and "truncated" in refused.stderr
    assert "Matcha" in products(shop)
    assert shop.devenv("snapshot", "save", "../evil").returncode == 2


def test_export_import_round_trip_and_unsafe_archives(shop: Project, tmp_path: Path) -> None:
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    shop.devenv("snapshot", "save", "share-me", check=True)
    out = tmp_path / "share-me.tar.gz"
    shop.devenv("snapshot", "export", "share-me", "-o", str(out), check=True)
    shop.devenv("snapshot", "delete", "share-me", check=True)
    sql(shop, "DELETE FROM product")
    shop.devenv("snapshot", "import", str(out), "--name", "imported", check=True)
    shop.devenv("snapshot", "restore", "imported", check=True)
    assert products(shop) == ["Green tea", "Coffee; dark"]

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        for name in ("x/manifest.json", "x/../../outside.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    refused = shop.devenv("snapshot", "import", str(evil))
    assert refused.returncode == 1 and "unsafe path" in refused.stderr
    assert not (shop.root / ".devenv/outside.txt").exists()
    assert not (shop.root / "outside.txt").exists()
    names = [s["name"] for s in json.loads(shop.devenv("snapshot", "list", "--json").stdout)]
    assert names == ["imported"]


def test_up_with_profile_loads_its_datasets_on_first_start(shop: Project) -> None:
    result = json.loads(shop.devenv("up", "--profile", "qa", "--json", check=True).stdout)
    assert result["datasets_loaded"] == ["demo"]
    assert products(shop) == ["Green tea", "Coffee; dark"]
    again = json.loads(shop.devenv("up", "--profile", "qa", "--json", check=True).stdout)
    assert again["datasets_loaded"] == []


def test_incomplete_snapshots_never_list_as_valid(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    (tmp_path / ".staging-half-x1").mkdir()  # a save cut short
    (tmp_path / "no-manifest").mkdir()
    staging = store.staging("ok")
    (staging / "db").mkdir()
    (staging / "db" / "f").write_bytes(b"data")
    store.commit(staging, "ok", {"created": "now", "created_ts": 1, "services": {"db": {
        "kind": "postgres", "version": "18"}}})
    assert [s.name for s in store.all()] == ["ok"]
    store.cleanup()
    assert not (tmp_path / ".staging-half-x1").exists()


def test_sql_splitter_keeps_quotes_comments_and_line_numbers() -> None:
    text = ("-- c ; \nCREATE TABLE a (x text); /* ; */\nINSERT INTO a VALUES ('a;b'), ($$c;d$$)"
            ";\n\nCREATE FUNCTION f() RETURNS int AS $fn$ SELECT 1; $fn$ LANGUAGE sql;\n")
    statements = list(split_sql(text))
    assert [s.line for s in statements] == [2, 3, 5]
    assert statements[1].text.endswith("($$c;d$$)")
    assert "SELECT 1;" in statements[2].text


def test_dataset_script_users_restore_from_and_version_pin(project: Project) -> None:
    db, _ = free_ports(2)
    (project.root / "seed.py").write_text(
        "import os, sys, psycopg\n"
        "with psycopg.connect(os.environ['DATABASE_URL'], autocommit=True) as c:\n"
        "    c.execute('CREATE TABLE IF NOT EXISTS seen (who text)')\n"
        "    c.execute(\"INSERT INTO seen VALUES ('script')\")\n"
        "sys.exit(int(os.environ.get('SEED_FAIL', '0')))\n")
    project.write(f"""\
        version: 1
        ingress: {{enabled: false}}
        services:
          db:
            kind: postgres
            port: {db}
            databases: [app]
            users: {{reporting: report-pw}}
        datasets:
          scripted: {{script: [python, seed.py]}}
        """)
    project.up()
    project.devenv("data", "load", "--dataset", "scripted", check=True)
    url = f"postgresql://reporting:report-pw@127.0.0.1:{db}/app"
    with psycopg.connect(url) as conn:  # the extra role can log in and read
        assert conn.execute("SELECT who FROM seen").fetchall() == [("script",)]
    project.devenv("snapshot", "save", "one-row", check=True)
    project.devenv("data", "load", "--dataset", "scripted", check=True)

    # a failing script is rolled back: the data is as it was before the load
    import subprocess
    import sys

    from conftest import ENV

    failed = subprocess.run([sys.executable, "-m", "devenv", "data", "load", "--dataset",
                             "scripted"], cwd=project.root, capture_output=True, text=True,
                            env={**ENV, "SEED_FAIL": "1"})
    assert failed.returncode == 1 and "the data is back as it was" in failed.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM seen").fetchone() == (2,)
    project.devenv("data", "restore", "--from", "one-row", check=True)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM seen").fetchone() == (1,)
    project.devenv("stop", "--persist-data", check=True)

    text = (project.root / "devenv.yaml").read_text()
    (project.root / "devenv.yaml").write_text(text.replace("databases: [app]",
                                                           "databases: [app]\n    version: '9'"))
    pinned = project.devenv("up")
    assert pinned.returncode == 1
    assert "wants PostgreSQL 9, the binaries are PostgreSQL 18" in pinned.stderr
