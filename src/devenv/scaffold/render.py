"""The devenv.yaml `devenv init` writes: every guess with its `why`."""

from __future__ import annotations

import json

from devenv.scaffold.data import PORT_WHY
from devenv.scaffold.found import Found, Scan

EMPTY = [
    "# No services were detected. Declare them like this:",
    "#   api:",
    "#     command: python app.py     # must listen on $PORT",
    "#     port: 8000                 # the service's stable address",
    "#     health: {http: /healthz}",
    "services: {}",
]


def render(project: str, scan: Scan) -> str:
    lines = [
        f"# devenv.yaml for {project}: every service, declared once. Each guess says why;",
        "# check them, then `devenv up`. Check this file with `devenv config validate`.",
        "# Editor completion: `devenv config schema > .devenv-schema.json`.",
        "version: 2",
        f"name: {project}",
        "",
    ]
    if not scan.services and not scan.data:
        return "\n".join(lines + EMPTY) + "\n"
    lines.append("services:")
    for d in scan.data:
        lines.append(f"  {d.name}:  # why: {'; '.join(d.why)}")
        lines.append(f"    kind: {d.kind}  # run by devenv, data in .devenv/data/{d.name}")
        lines.append(f"    port: {d.port}  # why: {PORT_WHY[d.kind]}")
        lines.append("")
    for item in scan.services:
        lines += _service(item)
    return "\n".join(lines).rstrip() + "\n"


def _service(item: Found) -> list[str]:
    lines = [f"  {item.name}:  # why: {item.why}",
             f"    command: {json.dumps(item.command)}"]
    if item.path != ".":
        lines.append(f"    path: {item.path}")
    if item.listens:
        why = item.port_why or "assigned"
        lines.append(f"    port: {item.port}  # why: {why}. The process listens on $PORT; "
                     "callers use this port")
        if item.health:
            where = next((s.name for s in item.sources if s.health == item.health),
                         "the code")
            lines.append(f"    health: {{http: {item.health}}}  # why: {where} serves "
                         f"{item.health}")
        else:
            lines.append("    # health: {http: /healthz}  # default: a TCP check on the port")
    if item.note:
        lines.append(f"    # note: {item.note}")
    if item.depends_on:
        lines.append("    depends_on:")
        lines += [f"      {name}: healthy  # why: {why}" for name, why in
                  item.depends_on.items()]
    else:
        lines.append("    # depends_on: [other-service]  # started first; gives "
                     "OTHER_SERVICE_URL")
    lines.append("")
    return lines
