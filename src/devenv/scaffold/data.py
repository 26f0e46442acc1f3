"""Data services a project needs: from its dependency lists, its imports and the variables
its code reads. Pure functions (the caller reads the files)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

# the name a data service gets (so its URL variable is the one clients expect), its port
DATA = {"postgres": ("db", 5433), "redis": ("redis", 6380)}
PORT_WHY = {"postgres": "5433, so a PostgreSQL of your own can keep 5432",
            "redis": "6380, so a Redis of your own can keep 6379"}
# the standard variable of each kind (what devenv sets for a dependency of that kind)
URL_VARS = {"postgres": "DATABASE_URL", "redis": "REDIS_URL"}

PY_PACKAGES = {
    "psycopg": "postgres", "psycopg2": "postgres", "psycopg2-binary": "postgres",
    "psycopg-binary": "postgres", "psycopg-pool": "postgres", "asyncpg": "postgres",
    "pg8000": "postgres", "sqlalchemy": "postgres", "sqlmodel": "postgres",
    "redis": "redis", "aioredis": "redis", "rq": "redis", "hiredis": "redis",
    "django-redis": "redis", "arq": "redis",
}
PY_MODULES = {
    "psycopg": "postgres", "psycopg2": "postgres", "asyncpg": "postgres", "pg8000": "postgres",
    "sqlalchemy": "postgres", "sqlmodel": "postgres",
    "redis": "redis", "aioredis": "redis", "rq": "redis", "arq": "redis",
}
NODE_PACKAGES = {
    "pg": "postgres", "postgres": "postgres", "pg-promise": "postgres",
    "@prisma/client": "postgres", "prisma": "postgres",
    "ioredis": "redis", "redis": "redis", "bullmq": "redis", "bull": "redis",
    "@redis/client": "redis",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())


def requirement_names(text: str) -> dict[str, str]:
    """requirements.txt: {normalised name: the line's extras, e.g. 'redis' for celery[redis]}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", line)
        if m and not line.startswith("-"):
            out[_norm(m.group(1))] = (m.group(2) or "").replace(" ", "")
    return out


def pyproject_names(text: str) -> dict[str, str]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}
    project = data.get("project", {})
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    poetry = data.get("tool", {}).get("poetry", {}).get("dependencies", {})
    lines += [k if not isinstance(v, dict) or not v.get("extras") else
              f"{k}[{','.join(v['extras'])}]" for k, v in poetry.items()]
    return requirement_names("\n".join(str(x) for x in lines))


def python_kinds(names: dict[str, str]) -> dict[str, str]:
    """{kind: why} from Python distribution names (with their extras)."""
    out: dict[str, str] = {}
    for name, extras in names.items():
        kind = PY_PACKAGES.get(name)
        if name in ("celery", "dramatiq") and "redis" in extras.split(","):
            kind = "redis"
            name = f"{name}[redis]"
        if kind:
            out.setdefault(kind, name)
    return out


def node_kinds(package_json: str) -> dict[str, str]:
    try:
        data = json.loads(package_json)
    except ValueError:
        return {}
    names = {**data.get("dependencies", {}), **data.get("devDependencies", {})}
    out: dict[str, str] = {}
    for name in names:
        if kind := NODE_PACKAGES.get(name):
            out.setdefault(kind, name)
    if "knex" in names and "pg" in names:
        out["postgres"] = "knex + pg"
    return out


def module_kinds(imports: frozenset[str], python: bool) -> dict[str, str]:
    table = PY_MODULES if python else NODE_PACKAGES
    return {table[m]: m for m in sorted(imports) if m in table}


def var_kind(var: str) -> str | None:
    """The data kind a variable's name points at (REDIS_URL, PG_DSN, DATABASE_URL…)."""
    if "REDIS" in var and not var.endswith(("_PORT", "_HOST", "_DB")):
        return "redis"
    if var in ("DATABASE_URL", "DB_URL", "PGHOST", "PGDATABASE") or \
            var.endswith(("DATABASE_URL", "_DB_URL", "_DSN")) or \
            (var.startswith(("POSTGRES", "PG_")) and var.endswith(("_URL", "_DSN", "_URI"))):
        return "postgres"
    return None


def django_postgres(root: Path) -> bool:
    """A Django project whose settings name PostgreSQL."""
    for path in list(root.glob("*/settings.py")) + list(root.glob("*/settings/*.py")):
        if "postgresql" in path.read_text(errors="replace"):
            return True
    return False
