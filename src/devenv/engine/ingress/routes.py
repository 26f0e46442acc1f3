"""What the ingress routes where, pure: the host names it answers (local ones and those
services declare, against DNS rebinding), request paths as raw and decoded segments, and the
route table (host routes first, then path prefixes, longest first, on whole decoded
segments; data services named, never routed)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


# ---- hosts


def host_name(value: str) -> str | None:
    """The name in a Host header (`name`, `name:port`, `[v6]:port`), lowercased and without a
    trailing dot; None when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[:end + 1], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:]
    else:
        name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    name = name.rstrip(".")
    return name or None


def is_local(name: str) -> bool:
    return name in LOCAL_HOSTS or name.endswith(".localhost")


# ---- paths


def split_path(raw_path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A request's path as (raw segments, decoded segments), dot segments resolved on the
    decoded ones (RFC 3986 §5.2.4): routes match the decoded segments and the raw ones are
    forwarded, so `/%73vc/x` is `/svc/x` for routing and an encoded `/` (`%2F`) stays inside
    its segment."""
    raw_segments = raw_path.split("/")[1:]
    out_raw: list[str] = []
    out_decoded: list[str] = []
    for i, raw in enumerate(raw_segments):
        decoded = unquote(raw)
        last = i == len(raw_segments) - 1
        if decoded in (".", ".."):
            if decoded == ".." and out_raw:
                out_raw.pop()
                out_decoded.pop()
            if last:  # `/a/..` is `/`, `/a/.` is `/a/`
                out_raw.append("")
                out_decoded.append("")
            continue
        out_raw.append(raw)
        out_decoded.append(decoded)
    return tuple(out_raw), tuple(out_decoded)


def prefix_segments(prefix: str) -> tuple[str, ...]:
    stripped = prefix.strip("/")
    return tuple(stripped.split("/")) if stripped else ()


# ---- routes


@dataclass(frozen=True)
class RouteSpec:
    """What the ingress knows of one service: its name, declared host and path prefix, and,
    for a data service, its kind (it gets no route: it speaks no HTTP)."""

    name: str
    host: str | None = None
    path: str | None = None
    strip_prefix: bool = False
    data_kind: str | None = None
    port: int | None = None
    running: bool = True


@dataclass(frozen=True)
class Target:
    service: str
    prefix: str = ""
    strip: bool = False
    segments: tuple[str, ...] = ()

    def forward(self, raw: tuple[str, ...]) -> str:
        """The path sent to the instance: the raw path, less the prefix when stripped."""
        if self.strip:
            raw = raw[len(self.segments):]
        return "/" + "/".join(raw)


@dataclass(frozen=True)
class NoHttp:
    """A data service asked for over HTTP."""

    service: str
    kind: str
    port: int | None

    def message(self) -> str:
        where = f" at 127.0.0.1:{self.port}" if self.port else ""
        return (f"'{self.service}' is a {self.kind} data service: it speaks the {self.kind} "
                f"protocol, not HTTP, so the ingress does not route to it. Connect a "
                f"{self.kind} client to it{where} (services that depend on it get its URL "
                "in their environment).")


@dataclass(frozen=True)
class RouteTable:
    hosts: dict[str, Target]
    prefixes: list[tuple[str, Target]]  # longest first
    data: dict[str, NoHttp] = field(default_factory=dict)  # by host
    declared: frozenset[str] = frozenset()  # hosts services declare, routed or not

    def allows(self, name: str | None) -> bool:
        return name is not None and (is_local(name) or name in self.declared)

    def match(self, host: str, decoded: tuple[str, ...]) -> Target | NoHttp | None:
        if host in self.hosts:
            return self.hosts[host]
        if host in self.data:
            return self.data[host]
        for _, target in self.prefixes:
            if decoded[:len(target.segments)] == target.segments:
                return target
        return None

    def describe(self) -> list[str]:
        out = [f"http://{h}/ -> {t.service}" for h, t in self.hosts.items()]
        out += [f"{p} -> {t.service}" for p, t in self.prefixes]
        return out


def build_routes(services: Iterable[RouteSpec]) -> RouteTable:
    hosts: dict[str, Target] = {}
    prefixes: list[tuple[str, Target]] = []
    data: dict[str, NoHttp] = {}
    declared: set[str] = set()
    for spec in services:
        host = host_name(spec.host) if spec.host else None
        if host:
            declared.add(host)
        if spec.data_kind is not None:
            refusal = NoHttp(spec.name, spec.data_kind, spec.port)
            for name in (f"{spec.name}.localhost", host):
                if name:
                    data[name] = refusal
            continue
        if not spec.running:
            continue
        hosts[f"{spec.name}.localhost"] = Target(spec.name)
        if host:
            hosts[host] = Target(spec.name)
        if spec.path:
            segments = prefix_segments(spec.path)
            prefixes.append((spec.path, Target(spec.name, spec.path, spec.strip_prefix,
                                               segments)))
    prefixes.sort(key=lambda p: len(p[1].segments), reverse=True)
    return RouteTable(hosts, prefixes, data, frozenset(declared))
