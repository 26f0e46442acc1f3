"""Data operations of a running environment: snapshots, restore, reset, dataset loads.

Each holds the locks of the data services (never the engine's), so they never interleave
with each other or with `up`/`scale` of those services, and never wait on other services'
reloads. A restore or reset takes only the data services offline; their stable addresses
stay up and hold new connections while they come back.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devenv import data as kinds
from devenv.config.load import Loaded
from devenv.core import faults
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import StateDir
from devenv.data.base import DataService, all_or_none
from devenv.data.datasets import Target, atomic, open_loads, run_loads
from devenv.data.snapshots import Snapshot, SnapshotStore, now_manifest
from devenv.engine.jobs import new_data_generation
from devenv.engine.reconciler import Engine
from devenv.engine.service import ServiceRunner
from devenv.plan import command_argv, url_var
from devenv.runtime.base import InstanceSpec
from devenv.wire import LoadResult

SCRIPT_TIMEOUT = 600.0


@dataclass(frozen=True)
class StopOutcome:
    """What `stop` does with the data: none, kept, or discarded after a snapshot."""

    data: str
    snapshot: str | None = None
    warning: str | None = None
    folders: tuple[Path, ...] = ()
    stores: tuple[DataService[Any], ...] = ()


class DataOps:
    def __init__(self, engine: Engine, state: StateDir):
        self.engine = engine
        self.state = state
        self.store = SnapshotStore(state.base / "snapshots")
        self.store.cleanup()  # only what dead processes left: never work in progress

    # ---- which data services

    def data_runners(self) -> dict[str, ServiceRunner]:
        return {n: r for n, r in self.engine.runners.items() if r.plan.data is not None}

    @asynccontextmanager
    async def _held(self, doing: str, healthy: bool = True
                    ) -> AsyncIterator[dict[str, ServiceRunner]]:
        """Every data service's runner, locked; with `healthy`, each must be serving."""
        names = list(self.data_runners())
        if not names:
            raise UsageError("no data service is running",
                             hint="start the environment (with its data services) with "
                             "`devenv up`")
        async with self.engine.holding(names, doing) as runners:
            down = [n for n, r in runners.items() if r.ready < 1]
            if healthy and down:
                raise DevenvError(f"data service(s) not healthy: {', '.join(down)}",
                                  hint="see `devenv status`")
            yield runners

    # ---- the record of loaded datasets

    @property
    def _record(self) -> Path:
        return self.state.data / ".datasets.json"

    @property
    def _journal(self) -> Path:
        """Names the guard snapshot of a dataset load in progress (gone once it is done)."""
        return self.state.data / ".load.json"

    @property
    def _restore_journal(self) -> Path:
        return self.state.data / ".restore.json"

    def _write_restore_journal(self, name: str, runners: dict[str, ServiceRunner],
                               phase: str) -> None:
        self.state.data.mkdir(parents=True, exist_ok=True)
        write_atomic(self._restore_journal, json.dumps(
            {"snapshot": name, "services": sorted(runners), "phase": phase}), mode=0o600)

    def finish_restores(self, stores: dict[str, DataService[Any]]) -> list[str]:
        """Before data services start: a restore cut short by a crash is finished (its copies
        were complete: the journal says `swapping`) or undone (`staging`); whatever restores
        left beside the live data is removed. What was done, to tell the user."""
        notices = []
        try:
            cut = json.loads(self._restore_journal.read_text())
        except (OSError, ValueError):
            cut = None
        if cut is not None:
            name = cut.get("snapshot", "?")
            if cut.get("phase") == "swapping":
                for svc in cut.get("services", []):
                    if svc in stores:
                        kinds.swap_restore(stores[svc])
                        new_data_generation(self.engine.ctx.root, svc)
                notices.append(f"the restore of snapshot '{name}' was cut short by a crash "
                               "after its data was ready; it was completed")
                self._set_loaded(list(self._snapshot_datasets(name)))
            else:
                notices.append(f"the restore of snapshot '{name}' was cut short by a crash "
                               "before it changed anything; the data is as it was")
            self._restore_journal.unlink(missing_ok=True)
        for ds in stores.values():
            kinds.drop_restore(ds)
        return notices

    def _snapshot_datasets(self, name: str) -> list[str]:
        try:
            return list(self.store.get(name).manifest.get("datasets", []))
        except DevenvError:
            return []

    async def recover(self) -> list[str]:
        """After a crash: a dataset load cut short is undone from its guard snapshot. What was
        done, to tell the user."""
        try:
            cut = json.loads(self._journal.read_text())
        except (OSError, ValueError):
            return []
        guard, dataset = str(cut.get("guard", "")), str(cut.get("dataset", "?"))
        if guard not in {s.name for s in self.store.all()}:
            self._journal.unlink(missing_ok=True)  # cut before its guard was complete
            return [f"a load of dataset '{dataset}' was cut short before it changed anything"]
        snap = self.store.get(guard)
        async with self._held(f"undoing the load of {dataset}", healthy=False) as runners:
            await self._restore({n: runners[n] for n in snap.manifest["services"]
                                 if n in runners}, guard)
        self._journal.unlink(missing_ok=True)
        self.store.delete(guard)
        return [f"a load of dataset '{dataset}' was cut short by a crash; its data services "
                "are back as they were before it (nothing of it was kept)"]

    def loaded_datasets(self) -> list[str]:
        try:
            return list(json.loads(self._record.read_text()))
        except (OSError, ValueError):
            return []

    def _set_loaded(self, names: list[str]) -> None:
        self.state.data.mkdir(parents=True, exist_ok=True)
        write_atomic(self._record, json.dumps(names), mode=0o600)

    # ---- snapshots

    async def save(self, name: str, project: str, automatic: bool = False) -> Snapshot:
        async with self._held(f"snapshot {name}") as runners:
            return await self._save(runners, name, project, automatic)

    async def _save(self, runners: dict[str, ServiceRunner], name: str, project: str,
                    automatic: bool) -> Snapshot:
        staging = self.store.staging(name)
        try:
            manifest = now_manifest(project, automatic, self.loaded_datasets())

            async def one(svc: str, runner: ServiceRunner) -> None:
                data = runner.plan.data
                assert data is not None
                version = await kinds.snapshot(data, staging / svc)
                manifest["services"][svc] = {"kind": data.kind, "version": version}

            # every data service at the same moment, while the services keep running; one
            # failing stops the others before their folder is removed
            await all_or_none(*(one(n, r) for n, r in runners.items()))
            return await asyncio.to_thread(self.store.commit, staging, name, manifest)
        except DevenvError as exc:
            self.store.discard(staging)
            if isinstance(exc, UsageError):
                raise
            raise DevenvError(f"snapshot '{name}' was not saved: {exc.message}",
                              details=exc.details, hint=exc.hint or "nothing was kept of it; "
                              "see `devenv logs` of the data services") from exc
        except BaseException:
            self.store.discard(staging)
            raise

    async def restore(self, name: str) -> Snapshot:
        async with self._held(f"restore of {name}", healthy=False) as runners:
            return await self._restore(runners, name)

    async def reset(self) -> list[str]:
        """Every data service back to fresh, provisioned, empty data."""
        async with self._held("data reset", healthy=False) as runners, \
                self.engine.offline(runners):
            for runner in runners.values():
                assert runner.plan.data is not None
                await asyncio.to_thread(_remove, runner.plan.data.folder)
                await asyncio.to_thread(kinds.discard_volume, runner.plan.data)
                await kinds.empty_in_place(runner.plan.data)
            self._record.unlink(missing_ok=True)
        return list(runners)

    # ---- datasets

    async def load(self, loaded: Loaded, dataset: str,
                   environ: dict[str, str] | None = None) -> LoadResult:
        from devenv.config.schema import did_you_mean

        if dataset not in loaded.project.datasets:
            raise UsageError(f"no dataset '{dataset}'"
                             f"{did_you_mean(dataset, loaded.project.datasets)}",
                             hint="datasets: " + (", ".join(loaded.project.datasets) or "none"))
        async with self._held(f"dataset load {dataset}") as runners:
            return await self._load(runners, loaded, dataset, environ or dict(os.environ))

    async def _load(self, runners: dict[str, ServiceRunner], loaded: Loaded, dataset: str,
                    environ: dict[str, str]) -> LoadResult:
        spec = loaded.project.datasets[dataset]
        targets: dict[str, Target] = {}
        for key in spec.files:
            service, _, database = key.partition("/")
            runner = runners.get(service)
            if runner is None or runner.plan.data is None:
                raise UsageError(f"dataset '{dataset}' loads into '{service}', which is not "
                                 "running", hint=f"devenv up --services {service}")
            targets[key] = Target(runner.plan.data, database or None)
        opened = await open_loads(loaded.root, spec.files, targets)  # every file read first
        touched = {t.data.name: runners[t.data.name] for t in targets.values()}
        guard = None
        if spec.script is not None or not atomic(opened):
            # not one transaction: keep a snapshot of what the load touches, and a journal
            # naming it, so a failure or a crash (then the next `up`) puts the data back
            if spec.script is not None:
                touched = runners
            guard = f"before-{dataset}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S-%f')}"
            await self._save(touched, guard, loaded.name, automatic=True)
            write_atomic(self._journal, json.dumps({"dataset": dataset, "guard": guard}),
                         mode=0o600)
            faults.point("load:guarded")
        try:
            counts = await run_loads(opened)
            if spec.script is not None:
                await self._script(spec.script, runners, environ)
        except BaseException:  # (run_loads has aborted what it staged)
            if guard:
                await self._restore(touched, guard)
            raise
        finally:
            if guard:
                self._journal.unlink(missing_ok=True)
                self.store.delete(guard)
        names = [n for n in self.loaded_datasets() if n != dataset] + [dataset]
        self._set_loaded(names)
        return LoadResult(dataset=dataset, counts=counts)

    async def _restore(self, runners: dict[str, ServiceRunner], name: str) -> Snapshot:
        """Verify every checksum first; then swap each data service's data, all at once."""
        snap = await asyncio.to_thread(self.store.verify, name)
        for svc, entry in snap.manifest["services"].items():
            runner = runners.get(svc)
            if runner is None or runner.plan.data is None:
                raise UsageError(f"snapshot '{name}' holds data of '{svc}', which is not a "
                                 "running data service here")
            if runner.plan.data.kind != entry["kind"]:
                raise UsageError(f"snapshot '{name}' holds {entry['kind']} data for "
                                 f"'{svc}', which is {runner.plan.data.kind} here")

        touched = {s: runners[s] for s in snap.manifest["services"]}
        stores = [r.plan.data for r in touched.values() if r.plan.data is not None]
        async with self.engine.offline(touched):
            # all or nothing across stores: stage every copy beside the live data, then a
            # journal (the commit point), then swap; a crash before the journal leaves the
            # old data, after it the next `up` finishes the swap (`finish_restores`)
            self._write_restore_journal(name, touched, "staging")
            try:
                await asyncio.gather(*(asyncio.to_thread(kinds.stage_restore, ds,
                                                         snap.path / ds.name)
                                       for ds in stores))
                faults.point("restore:staged")
            except BaseException:
                for ds in stores:
                    await asyncio.to_thread(kinds.drop_restore, ds)
                self._restore_journal.unlink(missing_ok=True)
                raise
            self._write_restore_journal(name, touched, "swapping")
            faults.point("restore:journaled")
            for ds in stores:  # (a thread: on a cluster the swap waits for sessions to end)
                await asyncio.to_thread(kinds.swap_restore, ds)
                faults.point("restore:swapped-one")
            self._restore_journal.unlink(missing_ok=True)
            for ds in stores:
                await asyncio.to_thread(kinds.drop_restore, ds)
                await asyncio.to_thread(new_data_generation, self.engine.ctx.root, ds.name)
        self._set_loaded(list(snap.manifest.get("datasets", [])))
        return snap

    async def _script(self, script: str | list[str], runners: dict[str, ServiceRunner],
                      environ: dict[str, str]) -> None:
        """Run a dataset script on the data services' runtime, from the project folder, with
        the caller's environment and every data service's URL."""
        env: dict[str, str] = dict(environ)
        for name, runner in runners.items():
            data = runner.plan.data
            assert data is not None
            env.setdefault(kinds.url_var(data.kind), kinds.url(data))
            env[url_var(name)] = kinds.url(data)
        runtime = next(iter(runners.values())).runtime
        spec = InstanceSpec(service="dataset", replica=0, command=(), env=env, workdir=".",
                            wants_port=False)
        result = await runtime.run(spec, command_argv(script), SCRIPT_TIMEOUT)
        if result.code != 0:
            lines = self.engine.ctx.logs.mask(result.output).splitlines()
            raise DevenvError(f"the dataset script failed (exit code {result.code}); the "
                              "data is back as it was", details=lines[-10:])

    # ---- stop

    async def before_stop(self, project: str, persist: bool, snapshot: bool = True
                          ) -> StopOutcome:
        """`stop`: with --persist-data keep the data; without, snapshot it first, and only
        then may it go (after the servers stopped). `snapshot=False`: it goes unsaved
        (`validate`'s copy)."""
        runners = self.data_runners()
        if not runners:
            return StopOutcome("none")
        if persist:
            return StopOutcome("kept")
        if not snapshot:
            stores = tuple(r.plan.data for r in runners.values() if r.plan.data)
            return StopOutcome("discarded", folders=tuple(d.folder for d in stores),
                               stores=stores)
        keep = max(self.engine.plan.keep_automatic if self.engine.plan else 3, 1)  # this one
        name = "auto-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
        try:
            await self.save(name, project, automatic=True)
        except Exception as exc:
            return StopOutcome("kept", warning=f"the automatic snapshot failed ({exc}); the "
                               "data was kept")
        self.store.prune_automatic(keep)
        stores = tuple(r.plan.data for r in runners.values() if r.plan.data)
        return StopOutcome("discarded", snapshot=name, folders=tuple(d.folder for d in stores),
                           stores=stores)

    async def after_stop(self, outcome: StopOutcome) -> None:
        if outcome.data == "discarded":
            for folder in outcome.folders:
                await asyncio.to_thread(_remove, folder)
            for ds in outcome.stores:  # (the docker runtime's data volumes)
                await asyncio.to_thread(kinds.discard_volume, ds)
            self._record.unlink(missing_ok=True)

    async def load_profile_datasets(self, loaded: Loaded,
                                    environ: dict[str, str] | None = None) -> list[str]:
        """`up --profile P`: P's datasets, the first time the data meets a dataset (the
        record goes whenever the data is discarded or reset, and a restore brings back the
        snapshot's own)."""
        wanted = loaded.project.profiles[loaded.profile].datasets if loaded.profile else []
        if not wanted or self._record.exists() or not self.data_runners():
            return []
        for dataset in wanted:
            await self.load(loaded, dataset, environ)
        return list(wanted)


def _remove(folder: Path) -> None:
    if folder.exists():
        doomed = folder.with_name(f".{folder.name}.deleting")
        shutil.rmtree(doomed, ignore_errors=True)
        folder.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

