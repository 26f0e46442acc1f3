"""`devenv validate`'s checks, run by the engine of the environment being validated (a
candidate copy, see devenv/candidate.py): each service healthy, its `test:` command run
in its environment (as `devenv exec` runs: SERVICE_URL, a data service's client
variables) through its runtime, and each of its dependencies reachable at its address.

Every wait is bounded: a test by its `run_timeout` and by what is left of the run's
`timeout` (`devenv validate --timeout`), killed at whichever comes first; a row still not
done past the run's end (with a grace) is answered as it stands, marked unfinished."""

from __future__ import annotations

import asyncio
import contextlib
import time

from devenv.config.injected import HOST
from devenv.config.load import Loaded
from devenv.engine.reconciler import Engine
from devenv.plan import command_argv, exec_spec
from devenv.wire import (
    DependencyCheck,
    RunOutcome,
    State,
    ValidationResult,
    ValidationRow,
)

CONNECT_TIMEOUT = 2.0
OUTPUT_LINES = 20
GRACE = 5.0  # past the run's end, for a runtime to kill a test and answer


async def validate(engine: Engine, loaded: Loaded, services: list[str],
                   timeout: float | None = None) -> ValidationResult:
    """Every named service (all that run, when none is named), checked at once, within
    `timeout` seconds (None: each test's own run_timeout only)."""
    plan = engine.plan
    names = [n for n in (plan.services if plan else {}) if n in engine.runners
             and (not services or n in services)]
    deadline = None if timeout is None else time.monotonic() + timeout
    rows = await asyncio.gather(*(_bounded(engine, loaded, name, deadline) for name in names))
    return ValidationResult(ok=all(r.ok for r in rows), services=list(rows))


async def _bounded(engine: Engine, loaded: Loaded, name: str, deadline: float | None
                   ) -> ValidationRow:
    if deadline is None:
        return await _row(engine, loaded, name, None)
    try:
        return await asyncio.wait_for(_row(engine, loaded, name, deadline),
                                      max(deadline - time.monotonic(), 0) + GRACE)
    except TimeoutError:  # (cancelled: the runtime killed what it ran)
        status = engine.runners[name].status()
        return ValidationRow(service=name, state=str(status.state), healthy=False, test=None,
                             dependencies=[], unfinished="checks")


async def _row(engine: Engine, loaded: Loaded, name: str, deadline: float | None
               ) -> ValidationRow:
    runner = engine.runners[name]
    status = runner.status()
    want = runner.plan
    healthy = status.state in ((State.COMPLETED,) if want.job else (State.HEALTHY,))
    test = None
    unfinished = ""
    command = loaded.project.services[name].test if name in loaded.project.services else None
    if command is not None:
        test, cut = await _test(engine, name, command, deadline)
        unfinished = "test" if cut else ""
    deps = await asyncio.gather(*(_reach(engine, dep) for dep in want.depends_on))
    return ValidationRow(service=name, state=str(status.state), healthy=healthy, test=test,
                         dependencies=list(deps), unfinished=unfinished)


async def _test(engine: Engine, name: str, command: str | list[str], deadline: float | None
                ) -> tuple[RunOutcome, bool]:
    """The test's outcome, and whether the run's end (not its run_timeout) cut it short."""
    runner = engine.runners[name]
    spec = exec_spec(runner.plan)
    began = time.monotonic()
    limit = runner.plan.run_timeout
    left = None if deadline is None else max(deadline - began, 0.0)
    if left is not None and left < limit:
        limit = left
    try:
        result = await runner.runtime.run(spec, command_argv(command), limit)
    except Exception as exc:  # a command that cannot start fails its test, with the reason
        return RunOutcome(code=127, seconds=round(time.monotonic() - began, 3),
                          output=str(exc)), False
    took = time.monotonic() - began
    lines = result.output.splitlines()[-OUTPUT_LINES:]
    cut = left is not None and limit == left and took >= limit and result.code != 0
    return RunOutcome(code=result.code, seconds=round(took, 3), output="\n".join(lines)), cut


async def _reach(engine: Engine, dep: str) -> DependencyCheck:
    """A TCP connection to the dependency's stable address (a job has none: completed)."""
    plan = engine.plan
    want = plan.services.get(dep) if plan else None
    if want is None:
        return DependencyCheck(dep, "", False, "not in the environment")
    if want.port is None:
        runner = engine.runners.get(dep)
        state = runner.status().state if runner else None
        done = state in (State.COMPLETED, State.HEALTHY, State.RUNNING)
        return DependencyCheck(dep, "", done, "" if done else f"it is {state or 'not running'}")
    address = f"{HOST}:{want.port}"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, want.port),
                                           CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        return DependencyCheck(dep, address, False, str(exc) or type(exc).__name__)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return DependencyCheck(dep, address, True)
