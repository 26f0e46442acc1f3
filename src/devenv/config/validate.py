"""Checks that need the whole model: references, cycles, ports, files, and the like."""

from __future__ import annotations

from pathlib import Path

from devenv.config.graph import find_cycle
from devenv.config.model import Project
from devenv.config.schema import Issue, did_you_mean


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
        if not _valid_name(name):
            issues.append(Issue(at, "service names use lower-case letters, digits and '-'"))
        command = svc.command if isinstance(svc.command, str) else " ".join(svc.command or ["x"])
        if not command.strip():
            issues.append(Issue(at + ("command",), "is empty; say what to run"))
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
            if not 1 <= svc.port <= 65535:
                issues.append(Issue(at + ("port",), f"{svc.port} is not a port (1-65535)"))
            elif svc.port in ports:
                issues.append(Issue(at + ("port",), f"port {svc.port} is already used by "
                                    f"{ports[svc.port]}; give each service its own port"))
            else:
                ports[svc.port] = f"service '{name}'"
        if svc.replicas < 0:
            issues.append(Issue(at + ("replicas",), "cannot be negative"))
        if svc.health is not None:
            issues += _health_issues(svc.health, svc.port, at + ("health",))
        if svc.ingress is not None and svc.port is None:
            issues.append(Issue(at + ("ingress",), "needs a port to route to; add `port:`"))
        if svc.ingress is not None and svc.ingress.path and not svc.ingress.path.startswith("/"):
            issues.append(Issue(at + ("ingress", "path"), "must start with '/'"))
        if not (root / svc.path).is_dir():
            issues.append(Issue(at + ("path",), f"folder '{svc.path}' does not exist"))
        for i, env_file in enumerate(svc.env_file):
            if not (root / env_file).is_file():
                issues.append(Issue(at + ("env_file", i), f"file '{env_file}' does not exist"))
    if project.ingress.enabled and not 1 <= project.ingress.port <= 65535:
        issues.append(Issue(("ingress", "port"), f"{project.ingress.port} is not a port"))
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
    kinds = [k for k in ("http", "tcp", "command") if getattr(health, k)]
    if len(kinds) != 1:
        return [Issue(at, "give exactly one of http, tcp or command")]
    if kinds[0] in ("http", "tcp") and port is None:
        return [Issue(at + (kinds[0],), "checks the service's port, but it has none; add `port:`")]
    if health.http is not None and not health.http.startswith("/"):
        return [Issue(at + ("http",), "must be a path starting with '/'")]
    return []


def _valid_name(name: str) -> bool:
    return bool(name) and name[0].isalnum() and all(c.isalnum() or c in "-_" for c in name) \
        and name == name.lower()


def _dataset_issues(project: Project, root: Path) -> list[Issue]:
    issues = []
    for name, dataset in project.datasets.items():
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
                if not (root / file).is_file():
                    issues.append(Issue(at + (i,), f"file '{file}' does not exist"))
    return issues
