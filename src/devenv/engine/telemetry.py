"""The engine's telemetry address: one HTTP server on 127.0.0.1 for what services and tools
send or fetch (an OTLP/HTTP receiver, Prometheus `/metrics`, the dashboard).

Its port is `monitoring.port`, or one picked on the first start and kept in
`.devenv/run/telemetry.port` so that URLs stay the same across engines. A token, new for each
engine, guards what is not public: services get it in `OTEL_EXPORTER_OTLP_HEADERS` (so only
they can send telemetry), and the dashboard's URL carries it (so another user of the machine
cannot read logs and traces). The routes come from one module per area (`ROUTES`).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from devenv.core.atomic import write_atomic
from devenv.core.errors import UsageError
from devenv.core.paths import PRIVATE_FILE, StateDir
from devenv.core.ports import port_owner
from devenv.engine.api import dashboard, metrics, otlp

if TYPE_CHECKING:
    from devenv.engine.app import Environment

HOST = "127.0.0.1"
RouteAdder = Callable[[web.Application, "Environment", str], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROUTES: tuple[RouteAdder, ...] = (otlp.add_routes, metrics.add_routes, dashboard.add_routes)
BODY_LIMIT = 8 * 1024 * 1024  # an OTLP request larger than this is refused (413)


@web.middleware
async def _local_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only `127.0.0.1:<port>` or `localhost:<port>` are answered: a web page whose own name
    was made to resolve to 127.0.0.1 (DNS rebinding) reads nothing here."""
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    port = sock[1] if sock else None
    if request.headers.get("Host", "").lower() not in {f"127.0.0.1:{port}",
                                                       f"localhost:{port}"}:
        return web.Response(status=403, text="devenv: this address answers only to "
                            f"127.0.0.1:{port} or localhost:{port}\n")
    return await handler(request)


class TelemetryServer:
    def __init__(self, env: Environment, state: StateDir):
        self.env = env
        self.state = state
        self.token = secrets.token_urlsafe(24)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str | None:
        return f"http://{HOST}:{self.port}" if self.port else None

    @property
    def dashboard_url(self) -> str | None:
        """The token rides in the fragment, which a browser never sends to a server (nor in a
        Referer): the page reads it and sends it as a bearer token (api/dashboard.py)."""
        return f"{self.url}/#token={self.token}" if self.url else None

    @property
    def metrics_url(self) -> str | None:
        return f"{self.url}/metrics" if self.url else None

    def service_env(self, service: str, replica: int) -> dict[str, str]:
        """The standard OpenTelemetry variables: an SDK with no configuration of its own
        sends its traces and metrics here, named after the service and its replica."""
        if not self.url:
            return {}
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{self.token}",
            "OTEL_SERVICE_NAME": service,
            "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={service}-{replica},"
                                        "deployment.environment.name=devenv",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "none",  # devenv keeps their output itself
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # spans within a fraction of a second
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        }

    async def ensure(self, port: int | None) -> str:
        """Listen on `port` (None: the kept one, else a new one); moved when it changed."""
        async with self._lock:
            wanted = port or self.port or self._kept()
            if self._runner is not None and wanted in (None, self.port):
                assert self.url is not None
                return self.url
            await self.close()
            app = web.Application(client_max_size=BODY_LIMIT, middlewares=[_local_host])
            for add in ROUTES:
                add(app, self.env, self.token)
            runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                   shutdown_timeout=1.0)
            await runner.setup()
            try:
                bound = await self._listen(runner, wanted, explicit=port is not None)
            except BaseException:
                await runner.cleanup()
                raise
            self._runner, self.port = runner, bound
            write_atomic(self.state.run / "telemetry.port", str(bound), PRIVATE_FILE)
            assert self.url is not None
            return self.url

    async def _listen(self, runner: web.AppRunner, port: int | None, explicit: bool) -> int:
        for candidate in ([port] if port else []) + ([] if explicit else [0]):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, candidate))
            except OSError as exc:
                sock.close()
                if explicit:
                    raise UsageError(
                        f"the telemetry address cannot listen on {HOST}:{candidate}: "
                        f"{exc.strerror}{port_owner(candidate)}",
                        hint="set another port with `devenv config set monitoring.port N`, or "
                        "stop what uses it") from exc
                continue  # the kept port is taken now: pick another
            site = web.SockSite(runner, sock)
            await site.start()
            return int(sock.getsockname()[1])
        raise UsageError("no port for the telemetry address")

    def _kept(self) -> int | None:
        try:
            return int((self.state.run / "telemetry.port").read_text())
        except (OSError, ValueError):
            return None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner, self.port = None, None
