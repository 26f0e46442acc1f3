"""The dependency graph as a Mermaid flowchart.

Node ids are made from the service names (`svc_` + the name, `-` as `_`: service names are
lower-case letters, digits and `-`, so no two collide), and every label is quoted, so a
service named like a Mermaid keyword (`end`, `graph`, `click`) or an arrow (`x-ray`, `o--x`)
is drawn as itself.
"""

from __future__ import annotations

from devenv.config.model import Project

INGRESS_ID = "devenv_ingress"  # (a service's id starts with svc_)


def node_id(name: str) -> str:
    return "svc_" + name.replace("-", "_")


def label(text: str) -> str:
    """A quoted Mermaid label: `"` and `#` written as entities."""
    return '"' + text.replace("#", "#35;").replace('"', "#quot;") + '"'


def graph(project: Project, ingress_port: int | None) -> str:
    """`flowchart LR`: services (data services as cylinders, one-shot jobs as subroutines),
    an arrow from each service to each dependency labelled with its condition (and
    `restart` when it is rolled after the dependency restarts), and the ingress's declared
    routes (hosts and path prefixes)."""
    lines = ["flowchart LR"]
    services = project.services
    for name in sorted(services):
        svc = services[name]
        if svc.is_data:
            lines.append(f"    {node_id(name)}[({label(f'{name} ({svc.kind})')})]")
        elif svc.job:
            lines.append(f"    {node_id(name)}[[{label(f'{name} (job)')}]]")
        else:
            lines.append(f"    {node_id(name)}[{label(name)}]")
    routes = sorted((name, svc.ingress) for name, svc in services.items()
                    if svc.ingress is not None and svc.port is not None and not svc.is_data)
    if ingress_port is not None and routes:
        lines.append(f"    {INGRESS_ID}{{{{{label(f'ingress :{ingress_port}')}}}}}")
        for name, route in routes:
            assert route is not None
            shown = [text for text in (route.host, route.path) if text]
            where = " ".join(shown) or f"{name}.localhost"
            lines.append(f"    {INGRESS_ID} -.->|{label(where)}| {node_id(name)}")
    for name in sorted(services):
        for dep, how in sorted(services[name].depends_on.items()):
            text = how.condition + (", restart" if how.restart else "")
            lines.append(f"    {node_id(name)} -->|{label(text)}| {node_id(dep)}")
    return "\n".join(lines) + "\n"
