"""Checks that need the whole model: references, cycles, ports, files, and the like."""

from __future__ import annotations

import os
from pathlib import Path

from devenv.config.graph import find_cycle
from devenv.config.model import Command, Project
from devenv.config.schema import Issue, did_you_mean
from devenv.config.schema import Path as KeyPath


def semantic_issues(project: Project, root: Path, known: set[str] | None = None
                    ) -> list[Issue]:
    """`known`: every declared service name, when `project` holds only those that read
    correctly (so references to the others are not reported as unknown)."""
    issues: list[Issue] = []
    names = set(project.services) | (known or set())
    ports: dict[int, str] = {}
    if project.ingress.enabled:
        ports[project.ingress.port] = "the ingress (ingress.port)"
    for name, svc in project.services.items():
        at = ("services", name)
        issues += _command_issues(svc.command, at + ("command",))
        if svc.health is not None:
            issues += _command_issues(svc.health.command, at + ("health", "command"))
        issues += _command_issues(svc.watch.build, at + ("watch", "build"))
        for dep in svc.depends_on:
            if dep == name:
                issues.append(Issue(at + ("depends_on", dep), "a service cannot depend on itself"))
            elif dep not in names:
                issues.append(Issue(at + ("depends_on", dep),
                                    f"unknown service '{dep}'{did_you_mean(dep, names)}"))
            elif dep not in project.services:
                continue  # declared, but broken itself: reported on its own lines
            elif (svc.depends_on[dep].condition == "completed"
                  and project.services[dep].restart == "always"):
                issues.append(Issue(at + ("depends_on", dep), f"waits for '{dep}' to complete, "
                                    f"but '{dep}' has restart: always; give it restart: no"))
            elif (database := svc.depends_on[dep].database) is not None:
                choices = project.services[dep].targets(dep)
                if not choices:
                    issues.append(Issue(at + ("depends_on", dep, "database"),
                                        f"'{dep}' has no databases to choose from"))
                elif database not in choices:
                    issues.append(Issue(at + ("depends_on", dep, "database"),
                                        f"'{dep}' has no database '{database}'"
                                        f"{did_you_mean(database, choices)}"))
        if svc.port is not None:
            if svc.port in ports:
                issues.append(Issue(at + ("port",), f"port {svc.port} is already used by "
                                    f"{ports[svc.port]}; give each service its own port"))
            else:
                ports[svc.port] = f"service '{name}'"
        if svc.health is not None:
            issues += _health_issues(svc.health, svc.port, at + ("health",))
        if svc.ingress is not None and svc.port is None:
            issues.append(Issue(at + ("ingress",), "needs a port to route to; add `port:`"))
        if svc.ingress is not None and svc.ingress.path and not svc.ingress.path.startswith("/"):
            issues.append(Issue(at + ("ingress", "path"), "must start with '/'"))
        if (outside := _outside(svc.path, "folder")) is not None:
            issues.append(Issue(at + ("path",), outside))
        elif not (root / svc.path).is_dir():
            issues.append(Issue(at + ("path",), f"folder '{svc.path}' does not exist"))
        for i, env_file in enumerate(svc.env_file):
            if (outside := _outside(env_file, "file")) is not None:
                issues.append(Issue(at + ("env_file", i), outside))
            elif not (root / env_file).is_file():
                issues.append(Issue(at + ("env_file", i), f"file '{env_file}' does not exist"))
            elif (undecodable := _not_text(root / env_file)) is not None:
                issues.append(Issue(at + ("env_file", i), f"file '{env_file}' {undecodable}"))
        for i, watched in enumerate(svc.watch.paths):
            if (outside := _outside(watched, "path")) is not None:
                issues.append(Issue(at + ("watch", "paths", i), outside))
    deps = {n: list(s.depends_on) for n, s in project.services.items()}
    cycle = find_cycle(deps)
    if cycle:
        issues.append(Issue(("services", cycle[0], "depends_on"),
                            "dependency cycle: " + " -> ".join(cycle)))
    issues += _dataset_issues(project, root)
    for pname, prof in project.profiles.items():
        for i, dataset in enumerate(prof.datasets):
            if dataset not in project.datasets:
                issues.append(Issue(("profiles", pname, "datasets", i), f"unknown dataset "
                                    f"'{dataset}'{did_you_mean(dataset, project.datasets)}"))
        for i, svc_name in enumerate(prof.services):
            if svc_name not in names:
                issues.append(Issue(("profiles", pname, "services", i),
                                    f"unknown service '{svc_name}'{did_you_mean(svc_name, names)}"))
    return issues


def _health_issues(health: object, port: int | None, at: tuple[str, ...]) -> list[Issue]:
    from devenv.config.model import HealthCheck

    assert isinstance(health, HealthCheck)
    given = {"http": health.http is not None, "tcp": health.tcp,
             "command": health.command is not None}
    kinds = [k for k, set_ in given.items() if set_]
    if len(kinds) != 1:
        return [Issue(at, "give exactly one of http, tcp or command")]
    if kinds[0] in ("http", "tcp") and port is None:
        return [Issue(at + (kinds[0],), "checks the service's port, but it has none; add `port:`")]
    if health.http is not None and not health.http.startswith("/"):
        return [Issue(at + ("http",), "must be a path starting with '/'")]
    return []


def _command_issues(command: Command | None, at: KeyPath) -> list[Issue]:
    """A command says what to run: not empty, and a list's first item names a program."""
    if command is None:
        return []
    if isinstance(command, str):
        return [] if command.strip() else [Issue(at, "is empty; say what to run")]
    if not command:
        return [Issue(at, "is an empty list; say what to run, e.g. [python, app.py]")]
    if not command[0].strip():
        return [Issue(at + (0,), "is empty; the first item is the program to run")]
    return []


def _outside(path: str, what: str) -> str | None:
    """Why a path written in the config does not stay inside the project (None: it does).
    Judged on the text, so a symbolic link inside the project may point anywhere."""
    if os.path.isabs(path) or path.startswith("~"):
        return f"'{path}' is not inside the project; give a {what} relative to the project"
    normal = os.path.normpath(path)
    if normal == ".." or normal.startswith(".." + os.sep):
        return f"'{path}' leads outside the project; give a {what} inside it"
    return None


def _not_text(path: Path) -> str | None:
    """Why a file cannot be read as UTF-8 text; None when it can (or cannot be read at
    all: that is reported where it is read)."""
    from devenv.config.load import not_utf8  # (load imports this module lazily)

    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except OSError:
        return None
    except UnicodeDecodeError as exc:
        line, byte = not_utf8(data, exc)
        return f"is not UTF-8 text (byte 0x{byte:02x} on line {line}); save it as UTF-8"
    return None


def _dataset_issues(project: Project, root: Path) -> list[Issue]:
    issues: list[Issue] = []
    for name, dataset in project.datasets.items():
        issues += _command_issues(dataset.script, ("datasets", name, "script"))
        for target, files in dataset.files.items():
            at = ("datasets", name, "files", target)
            service, _, database = target.partition("/")
            svc = project.services.get(service)
            if svc is None or not svc.is_data:
                data = [n for n, s in project.services.items() if s.is_data]
                issues.append(Issue(at, f"'{service}' is not a data service"
                                    f"{did_you_mean(service, data)}"))
                continue
            if database and database not in svc.targets(service):
                issues.append(Issue(at, f"'{service}' has no database '{database}'"))
            for i, file in enumerate(files):
                if (outside := _outside(file, "file")) is not None:
                    issues.append(Issue(at + (i,), outside))
                elif not (root / file).is_file():
                    issues.append(Issue(at + (i,), f"file '{file}' does not exist"))
    return issues


def replicas_problem(project: Project, name: str, count: int) -> str | None:
    """Why `name` cannot run `count` replicas (as `devenv scale` asks), by the same rules as
    `replicas:` written in devenv.yaml; None when it can."""
    import dataclasses

    from devenv.config.model import Service
    from devenv.config.schema import bound_problem

    field = next(f for f in dataclasses.fields(Service) if f.name == "replicas")
    problem = bound_problem(field, count)
    if problem is not None:
        return problem
    changed = dataclasses.replace(project.services[name], replicas=count)
    return next((message for path, message in changed.problems() if path == ("replicas",)),
                None)
