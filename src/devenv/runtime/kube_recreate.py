"""`provider: k3d` at a new Kubernetes version: the cluster recreated, the data carried over.

A k3d cluster cannot change its version: the pinned one (`kubernetes:`) needs a new cluster.
`recreate` does it, step by step, each said through `say`:

1. the old cluster's data services reached: their StatefulSets applied again where the
   project's claims are (a `stop` deleted the StatefulSets, not their volumes), waited for;
   none there (the project never ran on it, or its data was discarded): nothing to carry;
2. a snapshot of every one (`before-k3d-1.30-to-1.31`, not automatic: `stop`'s pruning
   keeps it; the cluster format of devenv.data.cluster), committed to the store;
3. `k3d cluster delete`, only once the snapshot verifies, holds every carried service's
   declared databases, and no devenv PersistentVolumeClaim in any namespace (another
   project's, a `validate` copy's, a former namespace's or service's) is left out of it:
   else refused, the journal cleared; 4. `k3d cluster create` at the pinned version;
5. the new cluster's data services applied and that snapshot restored into them (each
   kind's staged restore: stage, swap, drop), before any other service starts, so nothing
   ever sees them empty. The caller's `up` follows.

A journal (`.devenv/data/.k3d-recreate.json`: the cluster, the images, the snapshot, the
phase) is written before each step's effect: the next `recreate` (the next `devenv up`)
carries on from where a crash (kill -9) cut it, without asking again (a snapshot committed
before the journal said so is verified and carried on with). A failure after the delete
says how to get the data back; a failed restore (any error) clears the journal, naming the
snapshot. Failpoints (core/faults.py): `k3d:committed`, `k3d:saved`, `k3d:deleted`,
`k3d:created`.

Deleting a cluster is the user's call: `devenv up` asks (or takes `--yes`) before calling
this. Synchronous (API calls, the k3d CLI, the exec streams of devenv.data.cluster): from an
event loop, run it in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.core import faults
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError
from devenv.core.paths import PRIVATE_FILE, StateDir, private_dir

JOURNAL = ".k3d-recreate.json"  # in .devenv/data/

Say = Callable[[str], None]


@dataclass(frozen=True)
class Change:
    """A k3d cluster to recreate: at `found_image`, pinned to `image`."""

    cluster: str
    found_image: str
    image: str
    resumed: bool = False  # a recreate a crash cut short (already agreed to)

    @property
    def versions(self) -> str:
        from devenv.kube.k3d import minor

        return f"{minor(self.found_image)}-to-{minor(self.image)}"

    def describe(self) -> str:
        from devenv.kube.k3d import minor

        if self.resumed:
            return f"carrying on the recreate of the k3d cluster {self.cluster} that a crash " \
                   "cut short"
        return (f"the k3d cluster {self.cluster} runs Kubernetes {minor(self.found_image)} "
                f"({self.found_image}); the project pins {minor(self.image)} ({self.image}). "
                "A k3d cluster cannot change its version: devenv recreates it (`k3d cluster "
                "delete`, then `create`), its data services' data carried over in a snapshot")


def journal_file(root: Path) -> Path:
    return StateDir(root).data / JOURNAL


def _read(root: Path) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads(journal_file(root).read_text())
        return found
    except (OSError, ValueError):
        return None


def _write(root: Path, record: dict[str, Any]) -> None:
    private_dir(StateDir(root).data)
    write_atomic(journal_file(root), json.dumps(record), mode=PRIVATE_FILE)


def _name(loaded: Any) -> str:
    from devenv.kube import k3d

    return k3d.cluster_name(loaded.name, loaded.project.cluster.name)


def pending(loaded: Any) -> Change | None:
    """The recreate `loaded` needs (provider k3d, its cluster at another version than the
    pinned one), or the one a crash cut short; None when there is none. Runs `k3d cluster
    list`."""
    project = loaded.project
    if project.runtime != "kubernetes" or project.cluster.provider != "k3d":
        return None
    record = _read(loaded.root)
    if record is not None:
        return Change(record["cluster"], record["from"], record["to"], resumed=True)
    from devenv.kube import k3d

    found = k3d.found(_name(loaded), project.kubernetes.version)
    if found.action != "recreate-needed" or found.found_image is None:
        return None
    return Change(found.name, found.found_image, found.image)


@dataclass(frozen=True)
class Recreated:
    cluster: str
    image: str
    snapshot: str | None  # None: no data to carry
    services: tuple[str, ...]


def recreate(loaded: Any, say: Say) -> Recreated | None:
    """The project's k3d cluster recreated at the pinned version with its data services'
    data carried over (see the module); None when nothing needs it. Carries on a journaled
    recreate first. A failure raises DevenvError saying what to run."""
    from devenv.kube import k3d

    root = loaded.root
    change = pending(loaded)
    if change is None:
        return None
    say(change.describe())
    record = _read(root)
    if record is None:
        record = {"cluster": change.cluster, "from": change.found_image, "to": change.image,
                  "snapshot": _free_name(root, f"before-k3d-{change.versions}"),
                  "services": [], "phase": "saving"}
        _write(root, record)
    name = str(record["snapshot"])
    if record["phase"] == "saving":
        if k3d.found(change.cluster, loaded.project.kubernetes.version).action != \
                "recreate-needed":  # (cut before anything was deleted; the pin moved back)
            journal_file(root).unlink(missing_ok=True)
            say("the cluster runs the pinned version now: nothing to recreate")
            return None
        services = _saved(root, name, say)  # (a crash cut it after the commit)
        if services is None:
            services = _save(loaded, name, say)
        record.update(phase="saved", services=services)
        _write(root, record)
    services = list(record["services"])
    if record["phase"] == "saved":
        _guard(loaded, name, services)
    faults.point("k3d:saved")
    try:
        if record["phase"] == "saved":
            say(f"3/5 deleting the old cluster: k3d cluster delete {change.cluster}")
            if k3d.found(change.cluster, loaded.project.kubernetes.version).action != "missing":
                k3d.delete_cluster(change.cluster)
            record["phase"] = "deleted"
            _write(root, record)
        faults.point("k3d:deleted")
        if record["phase"] == "deleted":
            say(f"4/5 creating it at {k3d.minor(change.image)}: k3d cluster create "
                f"{change.cluster} --image {change.image}")
            if k3d.found(change.cluster, loaded.project.kubernetes.version).action == "missing":
                k3d.create_cluster(change.cluster, change.image)
            record["phase"] = "created"
            _write(root, record)
        faults.point("k3d:created")
    except DevenvError as exc:
        raise DevenvError(
            f"{exc.message}; the old cluster {change.cluster} is deleted",
            details=exc.details,
            hint=(f"its data is in snapshot {name}: fix the above, then `devenv up` carries "
                  f"on (it makes the cluster and restores the data); or, once a cluster "
                  f"runs and `devenv up` started it, `devenv snapshot restore {name}`")
            if services else "fix the above, then `devenv up` carries on") from exc
    if services:
        try:
            _restore(loaded, name, services, say)
        except Exception as exc:  # (any failure: a later `up` would only fail the same way)
            journal_file(root).unlink(missing_ok=True)  # (the snapshot says what to do)
            said = exc.message if isinstance(exc, DevenvError) else \
                f"restoring snapshot {name} failed: {type(exc).__name__}: {exc}"
            raise DevenvError(
                f"{said}; the cluster was recreated at {k3d.minor(change.image)} but "
                f"its data was not put back",
                details=exc.details if isinstance(exc, DevenvError) else [],
                hint=f"the data is in snapshot {name}: `devenv up`, then `devenv snapshot "
                f"restore {name}`") from exc
    else:
        say("5/5 nothing to restore")
    journal_file(root).unlink(missing_ok=True)
    say(f"the k3d cluster {change.cluster} runs Kubernetes {k3d.minor(change.image)}"
        + (f"; the data of {', '.join(services)} is carried over (snapshot {name} keeps it)"
           if services else ""))
    return Recreated(change.cluster, change.image, name if services else None,
                     tuple(services))


def snapshot_name(root: Path, change: Change) -> str:
    """The snapshot `recreate` takes (or, resumed, took) for `change`: what a plan shows."""
    record = _read(root) if change.resumed else None
    if record is not None:
        return str(record["snapshot"])
    return _free_name(root, f"before-k3d-{change.versions}")


def _free_name(root: Path, base: str) -> str:
    store = StateDir(root).base / "snapshots"
    name, n = base, 1
    while (store / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _stores(loaded: Any) -> dict[str, Any]:
    """Each data service's DataService (where its cluster side keeps its records)."""
    from devenv.plan import make_plan

    plan = make_plan(loaded)
    return {n: p.data for n, p in plan.services.items() if p.data is not None}


def _reach(loaded: Any, services: list[str] | None, say: Say | None
           ) -> tuple[Any, list[str]]:
    """The project's cluster (as the kubernetes runtime connects, recorded for the data
    commands), its Namespace and data services applied and waited for."""
    from devenv.runtime.kube_runtime import KubernetesRuntime, connect

    runtime = KubernetesRuntime(loaded.root)
    cluster = connect(loaded, ensure=False)
    runtime.record(cluster)
    if services is None:  # (the old cluster: only where the project's data is)
        services = _on_cluster(cluster, list(_stores(loaded)))
        if not services:
            return cluster, []
    if say is not None:
        say(f"1/5 reaching the old cluster's data services: {', '.join(services)}")
    runtime.apply_shared(loaded, cluster)
    return cluster, services


def _on_cluster(cluster: Any, names: list[str]) -> list[str]:
    """The data services with a StatefulSet or a claim (its volume) in the namespace."""
    from devenv.runtime.kubernetes import collection_path

    seen: set[str] = set()
    for kind in ("StatefulSet", "PersistentVolumeClaim"):
        path = collection_path("apps/v1" if kind == "StatefulSet" else "v1", kind,
                               cluster.namespace)
        with contextlib.suppress(LookupError):
            for item in cluster.api.request("GET", path, query=[
                    ("labelSelector", cluster.selector)]).get("items", []):
                seen.add(str(item["metadata"]["name"]))
    return [n for n in names if n in seen or f"data-{n}-0" in seen]


def _save(loaded: Any, name: str, say: Say) -> list[str]:
    """Steps 1 and 2: the snapshot of every data service on the old cluster (the names)."""
    from devenv.data import cluster as incluster
    from devenv.data.snapshots import SnapshotStore

    root = loaded.root
    cluster, services = _reach(loaded, None, say)
    try:
        _refuse_uncovered(loaded, cluster, services)
    finally:
        with contextlib.suppress(Exception):
            cluster.api.client.close()
    if not services:
        say("1/5 no data service of the project is on the old cluster: nothing to carry over")
        say("2/5 no snapshot needed")
        return []
    stores = _stores(loaded)
    state = StateDir(root)
    store = SnapshotStore(state.base / "snapshots")
    staging = store.staging(name)
    try:
        datasets = json.loads((state.data / ".datasets.json").read_text())
    except (OSError, ValueError):
        datasets = []
    manifest = carry_manifest(loaded.name, [str(d) for d in datasets])
    try:
        for svc in services:
            ds = stores[svc]
            version = asyncio.run(incluster.KINDS[ds.kind].snapshot(ds, staging / svc))
            manifest["services"][svc] = {"kind": ds.kind, "version": version}
        store.commit(staging, name, manifest)
        faults.point("k3d:committed")
    except BaseException as exc:
        store.discard(staging)
        if isinstance(exc, DevenvError):
            raise DevenvError(f"snapshot {name} of the old cluster's data failed: "
                              f"{exc.message}; nothing was deleted", details=exc.details,
                              hint="fix the above, then `devenv up` carries on") from exc
        raise
    say(f"2/5 snapshot {name} saved ({', '.join(services)}; `devenv snapshot list` shows it)")
    return services


def _restore(loaded: Any, name: str, services: list[str], say: Say) -> None:
    """Step 5: the new cluster's data services applied, the snapshot restored into them."""
    from devenv.data import cluster as incluster
    from devenv.data.snapshots import SnapshotStore

    stores = _stores(loaded)
    wanted = [s for s in services if s in stores]
    gone = [s for s in services if s not in stores]
    if gone:
        say(f"(no longer data services of the project: {', '.join(gone)}; their data stays "
            f"in snapshot {name})")
    say(f"5/5 restoring snapshot {name} into the new cluster's {', '.join(wanted)}")
    cluster, _ = _reach(loaded, wanted, None)
    with contextlib.suppress(Exception):
        cluster.api.client.close()
    snap = SnapshotStore(StateDir(loaded.root).base / "snapshots").verify(name)
    kinds = {s: incluster.KINDS[stores[s].kind] for s in wanted}
    try:
        for svc in wanted:
            kinds[svc].stage_restore(stores[svc], snap.path / svc)
    except BaseException:
        for svc in wanted:
            with contextlib.suppress(Exception):
                kinds[svc].drop_restore(stores[svc])
        raise
    for svc in wanted:
        kinds[svc].swap_restore(stores[svc])
    for svc in wanted:
        kinds[svc].drop_restore(stores[svc])


def carry_manifest(project: str, datasets: list[str]) -> dict[str, Any]:
    """The carry-over snapshot's manifest: not automatic, so `stop`'s pruning of automatic
    snapshots never removes it (the messages point to it by name)."""
    from devenv.data.snapshots import now_manifest

    return now_manifest(project, False, datasets)


def _saved(root: Path, name: str, say: Say) -> list[str] | None:
    """The services of snapshot `name` when a crash cut the recreate after its commit (the
    journal still said `saving`): it is verified and carried on with; None when there is no
    such snapshot."""
    from devenv.data.snapshots import SnapshotStore

    store = SnapshotStore(StateDir(root).base / "snapshots")
    if not (store.folder / name).is_dir():
        return None
    try:
        snap = store.verify(name, undone="nothing was deleted")
    except DevenvError as exc:
        raise DevenvError(exc.message, details=exc.details,
                          hint=f"`devenv snapshot delete {name}`, then `devenv up` takes it "
                          "again") from exc
    services = list(snap.manifest["services"])
    say(f"2/5 snapshot {name} was saved before the crash ({', '.join(services) or 'empty'}): "
        "carrying on with it")
    return services


def _refuse(root: Path, message: str, details: list[str], hint: str) -> DevenvError:
    """A refusal before the delete: the journal goes (nothing was deleted; the user's `up
    --yes` starts it again), the error says why."""
    journal_file(root).unlink(missing_ok=True)
    return DevenvError(f"{message}; nothing was deleted", details=details, hint=hint)


def _guard(loaded: Any, name: str, services: list[str]) -> None:
    """Just before `k3d cluster delete`: the snapshot verified and holding each carried data
    service's declared databases, and no claim on the cluster left out of it; else refused."""
    from devenv.data import cluster as incluster
    from devenv.data.snapshots import SnapshotStore
    from devenv.runtime.kube_runtime import connect

    root = loaded.root
    problems: list[str] = []
    if services:
        try:
            snap = SnapshotStore(StateDir(root).base / "snapshots").verify(
                name, undone="nothing was deleted")
        except DevenvError as exc:
            raise _refuse(root, exc.message, exc.details,
                          "fix the above, then `devenv up --yes`") from exc
        stores = _stores(loaded)
        for svc in (s for s in services if s in stores):
            ds = stores[svc]
            try:
                lacks = incluster.KINDS[ds.kind].missing(ds, snap.path / svc)
            except DevenvError as exc:
                lacks = [exc.message]
            problems += [f"{svc}: {what}" for what in lacks]
    if problems:
        raise _refuse(root, f"snapshot {name} does not hold all the data of the cluster's "
                      "data services: the cluster is kept", problems,
                      "each service's declared databases must be on the cluster to be "
                      "carried over: make the missing ones (or take them off `databases:`), "
                      "then `devenv up --yes`")
    cluster = connect(loaded, ensure=False)
    try:
        _refuse_uncovered(loaded, cluster, services)
    finally:
        with contextlib.suppress(Exception):
            cluster.api.client.close()


def uncovered_claims(items: list[dict[str, Any]], namespace: str, instance: str,
                     services: list[str]) -> list[str]:
    """The devenv claims (PersistentVolumeClaims, any namespace) that a snapshot of
    `services` of the project `instance` in `namespace` leaves out, each described."""
    from devenv.kube.render import INSTANCE_LABEL, NAME_LABEL

    found = []
    for item in items:
        meta = item.get("metadata") or {}
        labels = meta.get("labels") or {}
        ns, project, svc = meta.get("namespace", "?"), labels.get(INSTANCE_LABEL, "?"), \
            labels.get(NAME_LABEL, "?")
        if ns == namespace and project == instance and svc in services:
            continue
        found.append(f"{ns}/{meta.get('name', '?')} (project {project}, service {svc})")
    return sorted(found)


def _refuse_uncovered(loaded: Any, cluster: Any, services: list[str]) -> None:
    """Refused when the cluster holds a devenv claim in any namespace that the snapshot of
    `services` leaves out: another project's, a `validate` copy's, or this project's under a
    former namespace or service name (deleting the cluster would lose it)."""
    from devenv.kube.render import MANAGED_BY, MANAGED_LABEL, slug
    from devenv.runtime.kubernetes import collection_path

    root = loaded.root
    try:
        items = cluster.api.request(
            "GET", collection_path("v1", "PersistentVolumeClaim", None),
            query=[("labelSelector", f"{MANAGED_LABEL}={MANAGED_BY}")]).get("items", [])
    except (DevenvError, LookupError) as exc:
        raise _refuse(root, f"cannot list the cluster's volume claims to check that no data "
                      f"would be lost ({exc})", [],
                      "fix the above, then `devenv up --yes`") from exc
    left = uncovered_claims(items, cluster.namespace, slug(loaded.name), services)
    if left:
        raise _refuse(
            root, "the cluster holds data that the carry-over snapshot would not: deleting "
            "it would lose the volume claims below", left,
            "in another project (or a `devenv validate` copy still running), `devenv stop` "
            "there saves its data in a snapshot and removes its claims; a claim no project "
            "uses any more (a renamed service or namespace): copy out what you need, then "
            "`kubectl delete pvc -n NAMESPACE NAME`. Then `devenv up --yes` again")
