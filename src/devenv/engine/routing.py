"""The ingress of an environment: started, moved or stopped with the plan's port, and routed
to the services that run."""

from __future__ import annotations

import asyncio

from devenv.core.errors import UsageError
from devenv.core.ports import port_owner
from devenv.engine.ingress import Ingress, RouteSpec, build_routes
from devenv.engine.pool import Pool
from devenv.engine.reconciler import Engine


class Routing:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.ingress: Ingress | None = None
        self._lock = asyncio.Lock()  # concurrent `up` calls must not both start one
        engine.on_routes_changed = self.refresh

    @property
    def url(self) -> str | None:
        return self.ingress.url if self.ingress else None

    def _pool(self, name: str) -> Pool | None:
        runner = self.engine.runners.get(name)
        return runner.pool if runner else None

    async def ensure(self, port: int | None, trace_rate: int | None = None) -> str | None:
        """The ingress on `port` (None: none), recording at most `trace_rate` new traces a
        second (None: every request); its URL."""
        async with self._lock:
            if self.ingress is not None and self.ingress.port != port:
                await self.ingress.close()
                self.ingress = None
            if port is not None and self.ingress is None:
                candidate = Ingress(port, self._pool, hub=self.engine.ctx.hub)
                try:
                    await candidate.start()
                except OSError as exc:
                    await candidate.close()
                    raise UsageError(
                        f"the ingress cannot listen on 127.0.0.1:{port}: {exc.strerror}"
                        f"{port_owner(port)}", hint="set another port with `devenv config "
                        "set ingress.port N`, or stop what uses it") from exc
                self.ingress = candidate
            if self.ingress is not None:
                self.ingress.sampler.rate = trace_rate
            return self.url

    def refresh(self) -> None:
        plan = self.engine.plan
        if self.ingress is None or plan is None:
            return
        # every service of the plan: its declared host is accepted even while it does not
        # run, and a data service (it speaks no HTTP) is named as such rather than routed
        self.ingress.routes = build_routes(
            RouteSpec(p.name, host=p.route.host if p.route else None,
                      path=p.route.path if p.route else None,
                      strip_prefix=p.route.strip_prefix if p.route else False,
                      data_kind=p.data.kind if p.data is not None else None, port=p.port,
                      running=bool(p.port) and p.name in self.engine.runners)
            for p in plan.services.values())

    async def close(self) -> None:
        if self.ingress:
            await self.ingress.close()
            self.ingress = None
