"""The application layer: what the engine does for each request, whatever the transport.

The control API's handlers parse and answer; everything they ask for happens here: `up`
(config, plan, ingress, convergence, watching, profile datasets), `stop`, status, exec
targets, data operations. This layer and the engine below it are the only writers of
service state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from devenv.config.load import Loaded, load
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import StateDir
from devenv.engine.api.dashboard import Monitor
from devenv.engine.cascade import Cascade
from devenv.engine.dataops import DataOps
from devenv.engine.debugging import debug_off, debug_on, deferred_counts
from devenv.engine.profiler import Profiler
from devenv.engine.reconciler import Engine
from devenv.engine.reloader import Reloader
from devenv.engine.routing import Routing
from devenv.engine.telemetry import TelemetryServer
from devenv.engine.watch import Watcher, make_spec
from devenv.plan import Plan, exec_spec, make_plan
from devenv.runtime import Runtimes
from devenv.runtime.base import InstanceSpec
from devenv.telemetry.otlp_metrics import OtlpMetrics
from devenv.telemetry.store import Traces
from devenv.wire import (
    DebugResult,
    EngineInfo,
    EnvironmentStatus,
    ErrorInfo,
    Link,
    LoadResult,
    MigrateResult,
    OpResult,
    ProfileResult,
    ProfileTick,
    Progress,
    ResetResult,
    SnapshotSummary,
    StopResult,
    UpResult,
    ValidationResult,
)

CPU_WINDOW = 0.25
WATCH_READY_TIMEOUT = 10.0
CANCEL_TIMEOUT = 5.0
MAX_REPLICAS = 100  # as services.*.replicas allows


class Environment:
    def __init__(self, engine: Engine, root: Path, shutdown: asyncio.Event):
        self.engine = engine
        self.root = root
        self.shutdown = shutdown
        self.routing = Routing(engine)
        self.telemetry = TelemetryServer(self, StateDir(root))
        engine.ctx.service_env = self.telemetry.service_env
        engine.ctx.secrets.append(self.telemetry.token)
        self.traces = Traces(StateDir(root).base / "traces")  # opened by `up`
        engine.ctx.hub.span_sinks.append(self.traces.add)
        engine.ctx.hub.request_sinks.append(self.traces.add_requests)  # edge spans
        self.otlp_metrics = OtlpMetrics(engine.ctx.clock)  # services' OTLP metrics
        self.monitor = Monitor(self)  # the dashboard's charts: request rate, latency, CPU, memory
        self.data = DataOps(engine, StateDir(root))
        self.cascade = Cascade(engine)  # dependents rolled after a restart (restart: true)
        self.reloader = Reloader(engine)
        self.profiler = Profiler(root)  # `devenv profile`
        self.watcher = Watcher(self.reloader.trigger, engine.ctx.clock)
        self.profile: str | None = None  # of the last `up`
        self.environ: dict[str, str] | None = None  # the caller's, for ${VAR}
        self.watching = False
        self.migrating = False  # `migrate --confirm` brings the environment up itself
        self.started = time.time()
        self._work: set[asyncio.Task[object]] = set()  # `up`s in flight: `stop` cancels them

    @property
    def project(self) -> str:
        return self.engine.plan.project if self.engine.plan else self.root.name

    # ---- up and stop

    async def up(self, services: list[str], profile: str | None, environ: dict[str, str] | None,
                 watch: bool, progress: Callable[[Progress], None], rerun: list[str] | None = None
                 ) -> UpResult:
        task = asyncio.current_task()
        assert task is not None
        self._work.add(task)
        try:
            return await self._up(services, profile, environ, watch, progress, rerun or [])
        finally:
            self._work.discard(task)

    async def _up(self, services: list[str], profile: str | None,
                  environ: dict[str, str] | None, watch: bool,
                  progress: Callable[[Progress], None], rerun: list[str]) -> UpResult:
        self.environ = environ
        from devenv.migration import journal_file

        if journal_file(self.root).exists() and not self.migrating:
            raise DevenvError("a migration was cut short (.devenv/migrate/journal.json)",
                              hint="`devenv migrate --confirm` rolls it back to its snapshot")
        loaded = await asyncio.to_thread(load, self.root, profile, environ=environ)
        plan = make_plan(loaded, services)
        _check_rerun(plan, rerun)
        if isinstance(self.engine.ctx.runtimes, Runtimes):  # (kubernetes renders the project)
            self.engine.ctx.runtimes.configure(loaded)
        self.profile = loaded.profile
        self.cascade.watch()
        ingress = await self.routing.ensure(plan.ingress_port, plan.monitoring.trace_rate)
        loop, logs = asyncio.get_running_loop(), self.engine.ctx.logs

        def store_failed(text: str) -> None:  # (from the store's thread) `devenv logs` shows it
            loop.call_soon_threadsafe(logs.add, "devenv", "traces", "alert", text)

        self.traces.on_error = store_failed
        await asyncio.to_thread(self.traces.open, plan.monitoring.trace_max_mb * 1024 * 1024,
                                plan.monitoring.trace_max_age)
        await self.telemetry.ensure(plan.monitoring.port)
        self.monitor.start()
        stores = {n: p.data for n, p in plan.services.items()
                  if p.data is not None and n not in self.engine.runners}
        notices = await asyncio.to_thread(self.data.finish_restores, stores) if stores else []
        result = await self.engine.up(plan, progress, rerun)
        watching = self._watch(watch)
        with contextlib.suppress(TimeoutError):  # return once edits will be seen
            await asyncio.wait_for(asyncio.shield(watching), WATCH_READY_TIMEOUT)
        datasets: list[str] = []
        error = None
        if result.ok:
            try:
                async with self.cascade.around(self.data.data_runners(),
                                               "put back as before a dataset load"):
                    notices += await self.data.recover()
                    datasets = await self.data.load_profile_datasets(loaded, environ)
            except DevenvError as exc:
                error = ErrorInfo(exc.message, exc.details, exc.hint, exc.exit_code)
        result = replace(result, metrics=_link(self.telemetry.metrics_url),
                         dashboard=_link(self.telemetry.dashboard_url))
        return replace(result, ok=result.ok and error is None, error=error, ingress=ingress,
                       warnings=loaded.warnings + notices, datasets_loaded=datasets)

    def _watch(self, enabled: bool) -> asyncio.Future[None]:
        """Watch the files of every running service that reloads (`up --no-watch`: none)."""
        specs = []
        for runner in self.engine.runners.values():
            watch = runner.plan.watch
            if enabled and watch.enabled and watch.action != "none":  # none: it reloads itself
                specs.append(make_spec(runner.name, self.root, runner.plan.workdir,
                                       watch.paths, watch.ignore))
        self.watching = enabled and bool(specs)
        return self.watcher.update(specs)

    async def stop(self, persist_data: bool, snapshot: bool = True) -> StopResult:
        await self._cancel_work()
        names = list(self.engine.runners)
        outcome = await self.data.before_stop(self.project, persist_data, snapshot)
        if isinstance(self.engine.ctx.runtimes, Runtimes):  # (a cluster's volumes)
            self.engine.ctx.runtimes.keep_data = persist_data
        await self.halt()
        await self.data.after_stop(outcome)
        self.shutdown.set()
        return StopResult(ok=True, stopped=names, snapshot=outcome.snapshot, data=outcome.data,
                          warning=outcome.warning)

    async def halt(self) -> None:
        """Stop everything now (`stop`, SIGTERM, the project folder gone): what is in flight
        is cancelled first, so nothing waits on a start that would take long."""
        await self._cancel_work()
        self.watcher.stop()
        self.cascade.stop()
        await self.engine.stop_all()
        await self.monitor.stop()
        await self.telemetry.close()
        await asyncio.to_thread(self.traces.close)

    async def _cancel_work(self) -> None:
        work = [t for t in [*self._work, *self.reloader.tasks, *self.cascade.tasks]
                if t is not asyncio.current_task()]
        for task in work:
            task.cancel()
        if work:
            await asyncio.wait(work, timeout=CANCEL_TIMEOUT)

    # ---- reading

    async def status(self, resources: bool) -> EnvironmentStatus:
        if resources:  # CPU is measured over a short window
            for runner in self.engine.runners.values():
                for rep in runner.replicas:
                    if rep.instance:
                        rep.instance.resources()
            await asyncio.sleep(CPU_WINDOW)
        services = []
        for svc in self.engine.status():
            if resources:
                cpu, rss = 0.0, 0
                for rep in self.engine.runners[svc.name].replicas:
                    res = rep.instance.resources() if rep.instance else None
                    if res:
                        cpu, rss = cpu + res.cpu_percent, rss + res.rss_bytes
                svc = replace(svc, cpu_percent=round(cpu, 1), rss_bytes=rss)
            services.append(svc)
        return EnvironmentStatus(
            project=self.project, running=True, ingress=self.routing.url, services=services,
            engine=EngineInfo(pid=os.getpid(), uptime_s=round(time.time() - self.started, 1)),
            watching=self.watching, metrics=_link(self.telemetry.metrics_url),
            dashboard=_link(self.telemetry.dashboard_url))

    async def validate(self, services: list[str], timeout: float | None = None
                       ) -> ValidationResult:
        """`devenv validate`: each running service healthy, its `test:` passed, its
        dependencies reachable (engine/validation.py)."""
        from devenv.engine.validation import validate

        if self.engine.plan is None:
            raise UsageError("nothing runs here to validate", hint="run `devenv up` first")
        self.known(services)
        loaded = await asyncio.to_thread(load, self.root, self.profile, environ=self.environ)
        return await validate(self.engine, loaded, services, timeout)

    async def migrate(self) -> MigrateResult:
        """`devenv migrate --confirm` (engine/migration.py): a snapshot first, the plan
        applied, the environment up and healthy, or everything rolled back. The project's
        operation lock is held exclusively meanwhile (core/oplock.py): held here, not by the
        CLI, it lasts as long as the migration, even when the CLI that asked is gone."""
        from devenv.core import oplock
        from devenv.engine.migration import confirm

        if self.migrating:
            raise DevenvError("a migrate is already in progress in this environment's engine; "
                              "wait for it to finish",
                              hint="`devenv status` and `devenv logs` work meanwhile")
        self.migrating = True
        try:
            held = await asyncio.to_thread(oplock.Held, self.root, "migrate")
            try:
                return await confirm(self)
            finally:
                held.release()
        finally:
            self.migrating = False

    def exec_target(self, service: str) -> tuple[str, InstanceSpec]:
        """The runtime and spec `devenv exec SERVICE` runs with: as the service runs now (its
        profile and the environment of the `up` that started it)."""
        plan = self.engine.plan
        if plan is None or service not in plan.services:
            from devenv.config.schema import did_you_mean

            names = list(plan.services) if plan else []
            raise UsageError(f"no service '{service}'{did_you_mean(service, names)}",
                             hint="services: " + (", ".join(names) or "none"))
        want = plan.services[service]
        return want.runtime, exec_spec(want)

    async def sample(self, service: str, replica: int | None, seconds: float,
                      formats: list[str], memory: bool, tick: Callable[[ProfileTick], None],
                      allow_root: bool = False) -> ProfileResult:
        """Sample a running instance of `service` for `seconds` (`stop` cancels it, which
        stops the sampler)."""
        self.known([service])
        task = asyncio.current_task()
        assert task is not None
        self._work.add(task)
        try:
            return await self.profiler.profile(self.engine.runners[service], replica, seconds,
                                               formats, memory, tick, allow_root)
        finally:
            self._work.discard(task)

    # ---- data operations: each rolls the `restart: true` dependents of what it restarted

    async def restore(self, name: str) -> SnapshotSummary:
        async with self.cascade.around(self.data.data_runners(),
                                       f"restored from snapshot {name}") as outcome:
            snap = await self.data.restore(name)
        return replace(snap.summary(), rolled=outcome.rolled)

    async def reset(self) -> ResetResult:
        async with self.cascade.around(self.data.data_runners(), "reset to fresh data") \
                as outcome:
            names = await self.data.reset()
        return ResetResult(reset=names, rolled=outcome.rolled)

    async def load(self, loaded: Loaded, dataset: str,
                   environ: dict[str, str] | None) -> LoadResult:
        """A load that fails after it changed data puts the data back (a restore): the
        error then also says what was rolled."""
        async with self.cascade.around(self.data.data_runners(),
                                       f"put back as before dataset {dataset}"):
            return await self.data.load(loaded, dataset, environ)

    # ---- other mutations

    async def restart(self, names: list[str]) -> OpResult:
        names = names or list(self.engine.runners)
        self.known(names)
        return await self.cascade.restart(names)

    async def scale(self, counts: dict[str, int]) -> OpResult:
        self.known(list(counts))
        for name, count in counts.items():
            if self.engine.runners[name].plan.data is not None and count != 1:
                raise UsageError(f"cannot scale {name} to {count}: a data service runs exactly "
                                 "one server on its data", hint="scale the services that use it")
            if not 0 <= count <= MAX_REPLICAS:
                raise UsageError(f"cannot scale {name} to {count}: replicas are 0 to "
                                 f"{MAX_REPLICAS}")
        result = await self.engine.scale(counts)
        return replace(result, deferred=deferred_counts(self.engine.runners, counts))

    async def debug(self, name: str, wait: bool, off: bool, allow_root: bool = False
                    ) -> DebugResult:
        """Run `name` under its debugger, or (`off`) as planned again (engine/debugging.py)."""
        self.known([name])
        runner = self.engine.runners[name]
        if off:
            return await debug_off(self.engine, self.root, runner)
        loaded = await asyncio.to_thread(load, self.root, self.profile, environ=self.environ)
        service = loaded.project.services.get(name)
        return await debug_on(self.engine, self.root, runner,
                              service.debug if service else None, wait, allow_root)

    def known(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self.engine.runners]
        if unknown:
            running = ", ".join(self.engine.runners) or "none"
            raise DevenvError(f"not running: {', '.join(unknown)}", hint=f"running: {running}")


def _check_rerun(plan: Plan, names: list[str]) -> None:
    """`up --rerun NAME`: NAME must be a one-shot job this `up` brings up."""
    for name in names:
        if name not in plan.services:
            raise UsageError(f"--rerun {name}: no such service",
                             hint="see `devenv config show` for the services")
        if not plan.services[name].job:
            raise UsageError(f"--rerun {name}: {name} is not a one-shot job (restart: \"no\" "
                             "and no port)", hint=f"`devenv restart {name}` restarts a service")
        if name not in plan.selected:
            raise UsageError(f"--rerun {name}: {name} is not among the services this `up` "
                             "starts", hint=f"add it: --services ...,{name}")


def _link(url: str | None) -> Link | None:
    return Link(url) if url else None
