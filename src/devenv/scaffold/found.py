"""What `devenv init` found: app services and data services, each with why it was guessed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from devenv.scaffold.source import Source


@dataclass
class Found:
    """An app service: the command to run it, where, and every guess's reason."""

    name: str
    command: str
    path: str  # working folder, relative to the project
    why: str
    listens: bool = True  # gets a `port:` (and listens on $PORT)
    port: int | None = None  # the stable port wanted (the code's own default), else assigned
    port_why: str = ""
    note: str = ""  # what the user should know or do (shown as a comment)
    health: str | None = None
    sources: tuple[Source, ...] = ()  # the files it runs (entry first, then local imports)
    uses: dict[str, str] = field(default_factory=dict)  # data kind -> why
    depends_on: dict[str, str] = field(default_factory=dict)  # data service -> why
    named: bool = False  # its name comes from a manifest (else: from its folder or file)

    @property
    def reads(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for source in self.sources:
            for var in source.reads:
                seen.setdefault(var)
        return tuple(seen)


@dataclass
class DataFound:
    kind: str  # postgres | redis
    name: str
    port: int
    why: list[str] = field(default_factory=list)


@dataclass
class Scan:
    services: list[Found]
    data: list[DataFound] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.data] + [f.name for f in self.services]


def service_name(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "app"


def port_plan(found: Found, source: Source, example: str) -> Found:
    """Make `found` listen where devenv wants it: $PORT, under the name the code reads.
    `example` shows how the code could read PORT (`{n}` stands for its port)."""
    use = source.port
    if use is None:
        found.listens = False
        found.note = (f"{source.name} serves, but no port was found in it: make it listen on "
                      f"$PORT ({example.format(n=8000)}) and add `port:`")
    elif use.var == "PORT":
        found.port = use.default
        found.port_why = f"{source.name} reads PORT" + (
            f" (default {use.default})" if use.default else "")
    elif use.var is not None:
        found.command = f'{use.var}="$PORT" {found.command}'
        found.port = use.default
        found.port_why = f"{source.name} reads {use.var}: the command sets it from $PORT"
    else:
        found.listens = False
        found.note = (f"{source.name} listens on the fixed port {use.default}, not $PORT, so "
                      f"devenv gives it no address: make it read PORT "
                      f"({example.format(n=use.default)}) and add `port: {use.default}`")
    return found
