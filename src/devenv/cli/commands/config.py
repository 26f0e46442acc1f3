from __future__ import annotations

import argparse
import io
import json

from ruamel.yaml import YAML

from devenv.cli.commands._common import load_project, project_root
from devenv.cli.output import err, out, print_json, warn
from devenv.config.edit import edit, get_value, parse_value, to_plain
from devenv.config.load import load
from devenv.config.model import Project, Service
from devenv.config.schema import json_schema
from devenv.core.errors import ConfigError, Problem


def run(args: argparse.Namespace) -> int:
    action = args.action
    if action == "schema":
        print_json(schema())
        return 0
    if action == "validate":
        return validate(args)
    if action == "branch":
        from devenv.cli.commands import branch

        return branch.run(args)
    if action in ("show", "get"):
        loaded = load_project(args, args.profile)
        plain = to_plain(loaded.project)
        value = plain if action == "show" else get_value(plain, args.key)
        if getattr(args, "json", False):
            print_json(value)
        elif isinstance(value, dict | list):
            buf = io.StringIO()
            YAML(typ="safe", pure=True).dump(value, buf)
            out.print(buf.getvalue().rstrip(), markup=False)
        else:
            out.print(json.dumps(value) if value is None or isinstance(value, bool) else value,
                      markup=False)
        return 0
    root = project_root(args)
    value = None if action == "unset" else parse_value(args.value)
    written = edit(root, args.key, value, project=args.project, remove=action == "unset")
    verb = "removed" if action == "unset" else "set"
    out.print(f"{verb} {args.key} in {written.relative_to(root)}")
    return 0


def validate(args: argparse.Namespace) -> int:
    root = project_root(args)
    problems: list[Problem] = []
    profiles: list[str] = []
    warnings: list[str] = []
    services = 0
    try:
        loaded = load(root)
        services = len(loaded.project.services)
        profiles = list(loaded.project.profiles)
        warnings += loaded.warnings
        for name in profiles:
            try:
                warnings += [w for w in load(root, name).warnings if w not in warnings]
            except ConfigError as exc:
                problems += exc.problems
    except ConfigError as exc:
        problems += exc.problems
    if args.json:
        print_json({"ok": not problems, "problems": [
            {"file": p.file, "line": p.line, "path": p.path, "message": p.message}
            for p in problems], "warnings": warnings})
        return 2 if problems else 0
    for message in warnings:
        warn(message)
    if problems:
        raise ConfigError(problems)
    err.print(f"[green]ok[/]: {services} services, {len(profiles)} profiles")
    return 0


def schema() -> dict[str, object]:
    doc = json_schema(Project)
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "devenv.yaml"
    overrides = json_schema(Service, partial=True)
    profile = doc["properties"]["profiles"]["additionalProperties"]
    profile["properties"]["overrides"]["additionalProperties"] = overrides
    return doc
