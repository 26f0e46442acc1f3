"""Data operations of a running environment: snapshots, restore, reset, dataset loads.

All of them hold the engine's lock, so they never interleave with `up`, `scale` or each
other. A restore or reset stops only the data services it touches; their stable addresses
stay up and hold new connections while they come back.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devenv import data as kinds
from devenv.config.load import Loaded
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import StateDir
from devenv.data.datasets import Target, load_files
from devenv.data.snapshots import Snapshot, SnapshotStore, now_manifest
from devenv.engine.reconciler import Engine
from devenv.engine.service import ServiceRunner


class DataOps:
    def __init__(self, engine: Engine, state: StateDir):
        self.engine = engine
        self.state = state
        self.store = SnapshotStore(state.base / "snapshots")
        self.store.cleanup()

    # ---- which data services

    def data_runners(self) -> dict[str, ServiceRunner]:
        return {n: r for n, r in self.engine.runners.items() if r.plan.data is not None}

    def _running(self) -> dict[str, ServiceRunner]:
        runners = self.data_runners()
        if not runners:
            raise UsageError("no data service is running",
                             hint="start the environment (with its data services) with "
                             "`devenv up`")
        down = [n for n, r in runners.items() if r.ready < 1]
        if down:
            raise DevenvError(f"data service(s) not healthy: {', '.join(down)}",
                              hint="see `devenv status`")
        return runners

    # ---- the record of loaded datasets

    @property
    def _record(self) -> Path:
        return self.state.data / ".datasets.json"

    def loaded_datasets(self) -> list[str]:
        try:
            return list(json.loads(self._record.read_text()))
        except (OSError, ValueError):
            return []

    def _set_loaded(self, names: list[str]) -> None:
        self.state.data.mkdir(parents=True, exist_ok=True)
        write_atomic(self._record, json.dumps(names))

    # ---- snapshots

    async def save(self, name: str, project: str, automatic: bool = False) -> Snapshot:
        async with self.engine.lock:
            return await self._save(name, project, automatic)

    async def _save(self, name: str, project: str, automatic: bool) -> Snapshot:
        runners = self._running()
        staging = self.store.staging(name)
        try:
            manifest = now_manifest(project, automatic, self.loaded_datasets())

            async def one(svc: str, runner: ServiceRunner) -> None:
                data = runner.plan.data
                assert data is not None
                version = await kinds.snapshot(data, staging / svc)
                manifest["services"][svc] = {"kind": data.kind, "version": version}

            # every data service at the same moment, while the services keep running
            await asyncio.gather(*(one(n, r) for n, r in runners.items()))
            return await asyncio.to_thread(self.store.commit, staging, name, manifest)
        except BaseException:
            self.store.discard(staging)
            raise

    async def restore(self, name: str) -> Snapshot:
        async with self.engine.lock:
            return await self._restore_unlocked(name)

    async def reset(self) -> list[str]:
        """Every data service back to fresh, provisioned, empty data."""
        async with self.engine.lock:
            runners = self.data_runners()
            if not runners:
                raise UsageError("no data service is running", hint="run `devenv up` first")

            async def one(runner: ServiceRunner) -> None:
                data = runner.plan.data
                assert data is not None
                await runner.pause()
                await asyncio.to_thread(_remove, data.folder)
                await runner.scale(runner.desired or 1)

            await asyncio.gather(*(one(r) for r in runners.values()))
            await self._await_healthy(list(runners.values()))
            self._record.unlink(missing_ok=True)
            return list(runners)

    async def _await_healthy(self, runners: list[ServiceRunner]) -> None:
        reasons = await asyncio.gather(*(r.wait_condition("up", 120) for r in runners))
        failed = {r.name: reason for r, reason in zip(runners, reasons, strict=True) if reason}
        if failed:
            raise DevenvError("data services did not come back",
                              details=[f"{n}: {why}" for n, why in failed.items()])

    # ---- datasets

    async def load(self, loaded: Loaded, dataset: str,
                   environ: dict[str, str] | None = None) -> dict[str, Any]:
        async with self.engine.lock:
            return await self._load(loaded, dataset, environ or dict(os.environ))

    async def _load(self, loaded: Loaded, dataset: str, environ: dict[str, str]
                    ) -> dict[str, Any]:
        from devenv.config.schema import did_you_mean

        spec = loaded.project.datasets.get(dataset)
        if spec is None:
            raise UsageError(f"no dataset '{dataset}'"
                             f"{did_you_mean(dataset, loaded.project.datasets)}",
                             hint="datasets: " + (", ".join(loaded.project.datasets) or "none"))
        runners = self._running()
        targets: dict[str, Target] = {}
        for key in spec.files:
            service, _, database = key.partition("/")
            runner = runners.get(service)
            if runner is None or runner.plan.data is None:
                raise UsageError(f"dataset '{dataset}' loads into '{service}', which is not "
                                 "running", hint=f"devenv up --services {service}")
            targets[key] = Target(runner.plan.data, database or None)
        guard = None
        if spec.script is not None:  # a script cannot be rolled back: snapshot first
            guard = f"before-{dataset}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S-%f')}"
            await self._save(guard, loaded.name, automatic=True)
        try:
            counts = await load_files(loaded.root, spec.files, targets)
            if spec.script is not None:
                await self._script(loaded, spec.script, runners, environ)
        except BaseException:
            if guard:
                await self._restore_unlocked(guard)
            raise
        finally:
            if guard:
                self.store.delete(guard)
        names = [n for n in self.loaded_datasets() if n != dataset] + [dataset]
        self._set_loaded(names)
        return {"dataset": dataset, "counts": counts}

    async def _restore_unlocked(self, name: str) -> Snapshot:
        """Verify every checksum first; then swap each data service's data, all at once."""
        snap = await asyncio.to_thread(self.store.verify, name)
        runners = self.data_runners()
        for svc, entry in snap.manifest["services"].items():
            runner = runners.get(svc)
            if runner is None or runner.plan.data is None:
                raise UsageError(f"snapshot '{name}' holds data of '{svc}', which is not a "
                                 "running data service here")
            if runner.plan.data.kind != entry["kind"]:
                raise UsageError(f"snapshot '{name}' holds {entry['kind']} data for "
                                 f"'{svc}', which is {runner.plan.data.kind} here")

        async def one(svc: str) -> None:
            runner = runners[svc]
            data = runner.plan.data
            assert data is not None
            await runner.pause()
            await asyncio.to_thread(kinds.restore, data, snap.path / svc)
            await runner.scale(runner.desired or 1)

        await asyncio.gather(*(one(s) for s in snap.manifest["services"]))
        await self._await_healthy([runners[s] for s in snap.manifest["services"]])
        self._set_loaded(list(snap.manifest.get("datasets", [])))
        return snap

    async def _script(self, loaded: Loaded, script: str | list[str],
                      runners: dict[str, ServiceRunner], environ: dict[str, str]) -> None:
        from devenv.plan import command_argv, url_var

        env: dict[str, str] = {}
        for name, runner in runners.items():
            data = runner.plan.data
            assert data is not None
            env.setdefault(kinds.url_var(data.kind), kinds.url(data))
            env[url_var(name)] = kinds.url(data)
        proc = await asyncio.create_subprocess_exec(
            *command_argv(script), cwd=loaded.root, env={**environ, **env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            lines = self.engine.ctx.logs.mask(out.decode(errors="replace")).splitlines()
            raise DevenvError(f"the dataset script failed (exit code {proc.returncode}); the "
                              "data is back as it was", details=lines[-10:])

    # ---- stop

    async def discard_for_stop(self, project: str, keep: int) -> dict[str, Any]:
        """`stop` without --persist-data: snapshot first, then the data may go."""
        if not self.data_runners():
            return {"snapshot": None, "data": "none"}
        name = "auto-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
        try:
            await self._save(name, project, automatic=True)
        except Exception as exc:
            return {"snapshot": None, "data": "kept", "warning": f"the automatic snapshot "
                    f"failed ({exc}); the data was kept"}
        self.store.prune_automatic(keep)
        return {"snapshot": name, "data": "discarded"}

    def remove_data(self, folders: list[Path]) -> None:
        for folder in folders:
            _remove(folder)
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

