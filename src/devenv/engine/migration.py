"""`devenv migrate --confirm`, done by the engine: the plan (devenv/migration.py) applied
with a snapshot first and a rollback to it on failure.

1. The services stop (data moves need their servers stopped; a cluster to recreate must not
   be in use), the runtimes closed with their data kept (a cluster's volumes stay).
2. The k3d cluster, when it runs another Kubernetes version than the pinned one, is
   recreated at it (devenv.runtime.kube_recreate: its own snapshot of the data services
   first, `before-k3d-<from>-to-<to>`, then delete, create, restore; each step in the
   engine's log, `devenv logs devenv`). It comes first because it is the one step that
   cannot be rolled back (a deleted cluster is not made again), and the pin, already in
   devenv.yaml, asks for it whatever else migrates: when it fails, nothing else has been
   changed yet, and the failure says what to do instead of a rollback (recreate's own
   hint: `devenv up` carries on from its journal, or `devenv snapshot restore <name>`);
   the environment stays stopped. It runs before the migration's journal is written, so a
   crash in it leaves only recreate's journal, which `devenv up` (or the next `migrate`)
   carries on. Once it is done, a later failure rolls back the files and the data, and the
   cluster stays at the pinned version, its data carried over (the rollback's `up` runs on
   it). It uses the upgraded configuration (the rewritten schema, in memory).
3. The snapshot: each data service that moves is started once more on its old binaries and
   copied into a snapshot of the store (`migrate-<time>`, listed by `devenv snapshot list`,
   restorable with the old configuration) and dumped; the files the plan rewrites are kept
   in `.devenv/migrate/<time>/`, and a journal (`.devenv/migrate/journal.json`) names both.
4. The files are written (each atomically), the data moved (dump restored into a new data
   folder of the new version), then the environment comes up and must be healthy (the
   rewritten manifests are applied to the recreated cluster by that `up`).
5. Any failure: the services stop, the files get their old text back, each moved data
   service is restored from the snapshot (with its old binaries), and, when the
   environment ran before, it comes up again as it was.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from devenv import data as kinds
from devenv.core import faults
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import PRIVATE_FILE, StateDir, private_dir
from devenv.data.base import DataService, VersionMove
from devenv.data.postgres_upgrade import stop_left
from devenv.data.snapshots import SnapshotStore, now_manifest
from devenv.migration import Plan, journal_file, make, minor
from devenv.runtime.kube_recreate import Recreated
from devenv.wire import MigrateResult, Progress, UpResult

if TYPE_CHECKING:
    from devenv.engine.app import Environment


def _services(env: Environment, plan: Plan) -> dict[str, DataService[object]]:
    """The moving data services, as the upgraded configuration declares them."""
    from devenv.config.load import load
    from devenv.plan import make_plan

    loaded = load(env.root, env.profile, environ=env.environ,
                  texts={c.path: c.new for c in plan.files})
    services = make_plan(loaded).services
    out: dict[str, DataService[object]] = {}
    for move in plan.data:
        ds = services[move.service].data
        assert ds is not None
        out[move.service] = ds
    return out


def _old(ds: DataService[object], move: VersionMove) -> DataService[object]:
    """The service on the data's own binaries (the rollback restores with them)."""
    return _on(ds, move.old_bin, move.old)


def _on(ds: DataService[object], bin_dir: str | None, version: str) -> DataService[object]:
    return kinds.on_version(ds, version, bin_dir)


async def confirm(env: Environment) -> MigrateResult:
    state = StateDir(env.root)
    # a migration's servers that a killed engine left running (they hold their data)
    left = await asyncio.to_thread(stop_left, state.base)
    if journal_file(env.root).exists():
        return await recover(env, left)
    plan = await asyncio.to_thread(make, env.root)
    if not plan.changed:
        return MigrateResult(ok=True, changed=False, steps=plan.kube, applied=left)
    if plan.blocked:
        raise UsageError("the migration cannot be done here", hint="; ".join(plan.blocked))
    journal = journal_file(env.root)
    if journal.exists():
        return await recover(env, left)
    was_running = bool(env.engine.runners)
    profile, environ = env.profile, env.environ
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = state.base / "migrate" / stamp
    work = folder / "work"
    store = SnapshotStore(state.base / "snapshots")
    moving = await asyncio.to_thread(_services, env, plan)
    snapshot: str | None = None
    await env.halt()
    applied: list[str] = list(left)
    kept: list[str] = []  # what a rollback does not undo
    cluster_snapshot: str | None = None
    if plan.cluster is not None:
        done = await _recreate(env, plan)
        if isinstance(done, MigrateResult):
            return replace(done, applied=applied + done.applied)
        if done is not None:
            cluster_snapshot = done.snapshot
            step = (f"cluster {done.cluster}: Kubernetes {minor(plan.cluster.found_image)} → "
                    f"{minor(done.image)}, recreated" + (
                        f"; the data of {', '.join(done.services)} carried over (snapshot "
                        f"{done.snapshot})" if done.snapshot else ""))
            applied.append(step)
            kept.append(f"{step}: it stays so (the pin asks for it; a deleted cluster is "
                        "not made again)")
    try:
        private_dir(folder.parent)
        private_dir(folder)
        for i, change in enumerate(plan.files):
            write_atomic(folder / f"{i}.orig", change.old, mode=PRIVATE_FILE)
        if plan.data:
            snapshot = f"migrate-{stamp}"
            staging = store.staging(snapshot)
            try:
                manifest = now_manifest(env.project, True, [])
                for move in plan.data:
                    ds = moving[move.service]
                    version = await kinds.upgrade_save(ds, move, staging / ds.name, work)
                    manifest["services"][ds.name] = {"kind": ds.kind, "version": version}
                await asyncio.to_thread(store.commit, staging, snapshot, manifest)
            except BaseException:
                store.discard(staging)
                raise
        write_atomic(journal, json.dumps({
            "snapshot": snapshot, "folder": str(folder),
            "files": {str(c.path): str(folder / f"{i}.orig") for i, c in enumerate(plan.files)},
            "data": {m.service: {"old": m.old, "old_bin": m.old_bin} for m in plan.data}}),
            mode=PRIVATE_FILE)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        if was_running:  # nothing was changed: back as it was
            await _up(env, profile, environ)
        raise
    try:
        for change in plan.files:
            rewrite(change.path, change.new)
            applied.append(change.shown)
        faults.point("migrate:files")
        for move in plan.data:
            await kinds.upgrade_apply(moving[move.service], move, work)
            applied.append(f"{move.service}: {move.product} {move.old} → {move.new}")
        if faults.armed("migrate:fail"):
            raise DevenvError("injected failure (DEVENV_FAULTS=migrate:fail)")
        result = await _up(env, profile, environ)
        if not result.ok:
            failed = [f"{s.name}: {s.detail or s.state}" for s in result.services if not s.ok]
            raise DevenvError("the environment is not healthy after the migration",
                              details=failed or ([result.error.message] if result.error
                                                 else []))
    except BaseException as exc:
        undone = await _rollback(env, plan, moving, snapshot, folder)
        undone.append(_forget(folder))
        if was_running:
            await _up(env, profile, environ)
        journal.unlink(missing_ok=True)
        message = exc.message if isinstance(exc, DevenvError) else repr(exc)
        details = exc.details if isinstance(exc, DevenvError) else []
        if not isinstance(exc, Exception):
            raise
        return MigrateResult(ok=False, changed=bool(kept), steps=plan.steps(),
                             snapshot=snapshot or cluster_snapshot, applied=applied,
                             rolled_back=undone, error=message,
                             details=list(details) + kept)
    for ds in moving.values():
        await asyncio.to_thread(kinds.upgrade_finish, ds)
    journal.unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    if not was_running:
        await env.halt()
    return MigrateResult(ok=True, changed=True, steps=plan.steps(),
                         snapshot=snapshot or cluster_snapshot, applied=applied)


async def _recreate(env: Environment, plan: Plan) -> Recreated | MigrateResult | None:
    """Step 2: the k3d cluster recreated at the pinned version (the services are stopped);
    what was done (None: nothing needed it after all), or, when it failed, the failed result
    saying what to do (no rollback: see the module)."""
    from devenv.config.load import load
    from devenv.runtime import Runtimes, kube_recreate

    runtimes = env.engine.ctx.runtimes
    if isinstance(runtimes, Runtimes):  # (their connections to the old cluster; PVCs kept)
        runtimes.keep_data = True
        await runtimes.close()
    loop, logs = asyncio.get_running_loop(), env.engine.ctx.logs

    def say(line: str) -> None:  # (from recreate's thread) `devenv logs devenv` shows it
        loop.call_soon_threadsafe(logs.add, "devenv", "migrate", "out", line)

    try:
        loaded = await asyncio.to_thread(load, env.root, env.profile, environ=env.environ,
                                         texts={c.path: c.new for c in plan.files})
        return await asyncio.to_thread(kube_recreate.recreate, loaded, say)
    except Exception as exc:
        journaled = kube_recreate.journal_file(env.root).exists()
        if isinstance(exc, DevenvError):
            message, details, hint = exc.message, list(exc.details), exc.hint
        else:
            message, details = f"recreating the k3d cluster failed: {exc!r}", []
            hint = ("`devenv up --yes` carries on the recreate from its journal "
                    "(.devenv/data/.k3d-recreate.json)") if journaled else None
        rest = plan.files or plan.data
        return MigrateResult(
            ok=False, changed=False, steps=plan.steps(), error=message, hint=hint,
            details=details + ["the environment is stopped; nothing else was migrated (the "
                               "cluster comes first)" + ("; `devenv migrate --confirm` does "
                                                         "the rest once the cluster runs"
                                                         if rest else "")])


async def recover(env: Environment, left: list[str] | None = None) -> MigrateResult:
    """A migration cut short (the engine died mid-way): its servers left running stopped
    (`left`: what was), files put back, the moved data restored from the snapshot (the
    files, put back first, name the old binaries)."""
    from devenv.config.load import load
    from devenv.plan import make_plan

    journal = journal_file(env.root)
    record = json.loads(journal.read_text())
    await env.halt()
    undone = list(left or [])
    for path, saved in record["files"].items():
        original = Path(saved).read_text()
        if Path(path).read_text() != original:
            rewrite(Path(path), original)
            undone.append(str(Path(path).relative_to(env.root)))
    if record["snapshot"] and record["data"]:
        services = make_plan(await asyncio.to_thread(load, env.root)).services
        store = SnapshotStore(StateDir(env.root).base / "snapshots")
        snap = await asyncio.to_thread(store.verify, record["snapshot"])
        for name, was in record["data"].items():
            found = services[name].data
            assert found is not None
            ds = _on(found, was["old_bin"], was["old"])
            await asyncio.to_thread(kinds.stage_restore, ds, snap.path / name)
            await asyncio.to_thread(kinds.swap_restore, ds)
            await asyncio.to_thread(kinds.drop_restore, ds)
            await asyncio.to_thread(kinds.upgrade_finish, ds)
            undone.append(f"{name}: restored from snapshot {record['snapshot']}")
    if record.get("folder"):
        undone.append(_forget(Path(record["folder"])))
    journal.unlink()
    return MigrateResult(ok=False, changed=False, steps=[], snapshot=record["snapshot"],
                         rolled_back=undone, error="a migration was cut short; it is rolled "
                         "back (run `devenv migrate --confirm` again to migrate)")


def rewrite(path: Path, text: str) -> None:
    """`path`'s new text, atomically (temp file, fsync, rename), in the file it names: a
    symlink is followed, not replaced, and the file keeps its owner and mode (the engine
    run as root leaves the user's files the user's)."""
    target = path.resolve()
    st = target.stat()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _forget(folder: Path) -> str:
    """The migration's folder removed: its dump holds every row and the roles' password
    hashes, and the saved files are back in place (the snapshot stays, listed)."""
    shutil.rmtree(folder, ignore_errors=True)
    return "removed the migration's dump and saved files"


async def _up(env: Environment, profile: str | None, environ: dict[str, str] | None
              ) -> UpResult:
    def ignore(_: Progress) -> None:
        return None

    return await env.up([], profile, environ, False, ignore)


async def _rollback(env: Environment, plan: Plan, moving: dict[str, DataService[object]],
                    snapshot: str | None, folder: Path) -> list[str]:
    """Files back to their old text, moved data back from the snapshot; what was undone."""
    undone: list[str] = []
    await env.halt()
    for i, change in enumerate(plan.files):
        original = (folder / f"{i}.orig").read_text()
        if change.path.read_text() != original:
            rewrite(change.path, original)
            undone.append(change.shown)
    if snapshot is not None:
        store = SnapshotStore(StateDir(env.root).base / "snapshots")
        snap = await asyncio.to_thread(store.verify, snapshot)
        for move in plan.data:
            old = _old(moving[move.service], move)
            await asyncio.to_thread(kinds.stage_restore, old, snap.path / old.name)
            kinds.swap_restore(old)
            await asyncio.to_thread(kinds.drop_restore, old)
            await asyncio.to_thread(kinds.upgrade_finish, old)
            undone.append(f"{move.service}: restored from snapshot {snapshot} "
                          f"({move.product} {move.old})")
    return undone


