"""What a source file says about itself: the environment variables it reads, the port it
listens on, whether it serves or loops (a worker), and the data clients it imports.

Pure functions on text, so every layout is cheap to test."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = r"([A-Z][A-Z0-9_]*)"
ENV_READS = (
    re.compile(rf"""os\.environ\s*\[\s*["']{_NAME}["']"""),
    re.compile(rf"""os\.environ\.get\(\s*["']{_NAME}["']"""),
    re.compile(rf"""os\.getenv\(\s*["']{_NAME}["']"""),
    re.compile(rf"""process\.env\.{_NAME}"""),
    re.compile(rf"""process\.env\[\s*["']{_NAME}["']\s*\]"""),
)
# the default a read falls back to: environ.get("PORT", "8001"), getenv("PORT") or 8001,
# process.env.PORT || 3000, process.env.PORT ?? 3000
_DEFAULT = r"""(?:\s*,\s*["']?(\d{2,5})|[^)\n]{0,40}?\)?\s*(?:or|\|\||\?\?)\s*["']?(\d{2,5}))"""
# a literal port: .listen(3000, run(port=8000), ("127.0.0.1", 8000), ("", 8000)
LITERAL_PORTS = (
    re.compile(r"\.listen\(\s*(\d{2,5})\b"),
    re.compile(r"\bport\s*[=:]\s*(\d{2,5})\b"),
    re.compile(r"""\(\s*["'][\w.:]*["']\s*,\s*(\d{2,5})\s*\)"""),
)

PY_LISTENERS = {
    "FastAPI(": "a FastAPI app", "Flask(": "a Flask app", "Starlette(": "a Starlette app",
    "web.run_app(": "an aiohttp app", "web.Application(": "an aiohttp app",
    "uvicorn.run(": "uvicorn.run", "HTTPServer(": "an http.server listener",
    "socketserver.": "a socketserver listener", "asyncio.start_server(": "an asyncio server",
    ".serve_forever(": "a listener (serve_forever)", ".bind((": "a socket listener",
    "app.run(": "an app.run() server",
}
JS_LISTENERS = {
    ".listen(": "a listener (.listen)", "createServer(": "an http server",
    "express()": "an Express app", "fastify(": "a Fastify app", "new Koa(": "a Koa app",
}
PY_LOOPS = {
    "while True": "a `while True` loop", ".blpop(": "a Redis BLPOP consumer",
    ".brpop(": "a Redis BRPOP consumer", ".xread": "a Redis stream consumer",
    ".subscribe(": "a subscriber", ".listen()": "a listener loop",
    "run_forever(": "an event loop run forever", ".consume(": "a queue consumer",
    ".basic_consume(": "a queue consumer", "Worker(": "a queue worker",
}
JS_LOOPS = {
    "setInterval(": "a setInterval loop", "while (true)": "a `while (true)` loop",
    "new Worker(": "a queue worker", ".subscribe(": "a subscriber",
    ".brpop(": "a Redis BRPOP consumer", ".blpop(": "a Redis BLPOP consumer",
}
MAIN_GUARD = re.compile(r"""^if\s+__name__\s*==\s*["']__main__["']\s*:""", re.M)
TOP_LEVEL_RUN = re.compile(r"^(?:while\s|asyncio\.run\(|main\(\))", re.M)


@dataclass(frozen=True)
class PortUse:
    """How a program chooses its port: the variable it reads (None: a literal only), and
    the number it falls back to (or listens on)."""

    var: str | None
    default: int | None


@dataclass(frozen=True)
class Source:
    """One file, analysed."""

    name: str  # as written in a `why`: api.py, web/server.js
    reads: tuple[str, ...]  # environment variables, in order of first read
    listener: str | None  # what makes it serve, as said in a `why`
    loop: str | None  # what makes it a long-running worker
    main_guard: bool
    port: PortUse | None
    health: str | None  # /healthz or /health when it serves one
    imports: frozenset[str]  # top-level modules (Python) or packages (JS) it imports


def env_reads(text: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    hits = sorted((m.start(), m.group(1)) for rx in ENV_READS for m in rx.finditer(text))
    for _, name in hits:
        seen.setdefault(name)
    return tuple(seen)


def port_use(text: str, reads: tuple[str, ...]) -> PortUse | None:
    """PORT first, then any *_PORT variable the code reads; else a literal port."""
    wanted = [r for r in reads if r == "PORT"] + [r for r in reads if r.endswith("_PORT")
                                                  and not _data_port(r)]
    for var in wanted:
        for rx in ENV_READS:
            for m in rx.finditer(text):
                if m.group(1) != var:
                    continue
                tail = re.match(_DEFAULT, text[m.end():m.end() + 60])
                number = next((g for g in tail.groups() if g), None) if tail else None
                return PortUse(var, int(number) if number else None)
    for rx in LITERAL_PORTS:
        literal = rx.search(text)
        if literal and 80 <= int(literal.group(1)) <= 65535:
            return PortUse(None, int(literal.group(1)))
    return None


def _data_port(var: str) -> bool:
    return any(word in var for word in ("REDIS", "PG", "POSTGRES", "DB", "DATABASE"))


def py_imports(text: str) -> frozenset[str]:
    found = re.findall(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", text, re.M)
    found += [m for line in re.findall(r"^\s*import\s+(.+)$", text, re.M)
              for m in re.findall(r"(?:^|,)\s*([A-Za-z_]\w*)", line)]
    return frozenset(found)


def js_imports(text: str) -> frozenset[str]:
    found = re.findall(r"""require\(\s*["']([^"']+)["']\s*\)""", text)
    found += re.findall(r"""(?:from|import)\s*\(?\s*["']([^"']+)["']""", text)
    return frozenset(f if f.startswith(".") else _package(f) for f in found)


def _package(spec: str) -> str:
    parts = spec.removeprefix("node:").split("/")
    return "/".join(parts[:2]) if spec.startswith("@") else parts[0]


def _first(text: str, table: dict[str, str]) -> str | None:
    hits = [(text.find(k), v) for k, v in table.items() if k in text]
    return min(hits)[1] if hits else None


def _health(text: str) -> str | None:
    for path in ("/healthz", "/health"):
        if re.search(rf"""["']{path}["']""", text):
            return path
    return None


def analyse(name: str, text: str) -> Source:
    python = name.endswith(".py")
    reads = env_reads(text)
    return Source(
        name=name, reads=reads,
        listener=_first(text, PY_LISTENERS if python else JS_LISTENERS),
        loop=_first(text, PY_LOOPS if python else JS_LOOPS),
        main_guard=bool(MAIN_GUARD.search(text)) if python else True,
        port=port_use(text, reads),
        health=_health(text),
        imports=py_imports(text) if python else js_imports(text),
    )


def app_variable(text: str, factory: str) -> str:
    """The name a FastAPI/Flask app is bound to (`app = FastAPI()`), default `app`."""
    m = re.search(rf"^(\w+)\s*(?::\s*\w+\s*)?=\s*{re.escape(factory)}\(", text, re.M)
    return m.group(1) if m else "app"
