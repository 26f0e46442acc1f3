"""An isolated copy of a project, for `devenv validate`: the same files, its own state and
ports, run by an engine of its own, beside (never instead of) the environment running.

The copy is a temporary folder holding devenv.yaml (copied) and a link to every other
entry of the project (`.devenv` excepted), with a fresh `.devenv/` whose personal overrides
(`.devenv/local.yaml`, the last layer `config.load` reads) are the candidate
configuration: this checkout's overrides or a config branch's, then `--set` values, then
every declared port moved to a free one (each service's `port`, `ingress.port`,
`monitoring.port`). It is named `<name>-validate-<hex>` (and a `cluster.namespace` given gets
the same suffix), so on a cluster its namespace and labels are its own, never the running
environment's; a k3d cluster is the project's own (its name pinned). Docker names come from
the copy's folder, so they differ already. Its data services start from empty data.
`close` stops its engine and removes the folder; the engine also ends by itself once its
project folder is gone. The folder names the `devenv validate` that made it (`owner.json`:
its pid and start time), so a copy whose maker was killed is found (`stale`) and cleaned up
by the next `validate`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import PRIVATE_FILE, StateDir

# Below Linux's ephemeral range (32768-60999 by default: net.ipv4.ip_local_port_range), so an
# outgoing connection never holds a port the copy is about to listen on.
DEFAULT_PORTS = "30000-31999"
FOLDER = "c"  # the copy's folder name: short, for the engine socket's path
PREFIX = "devenv-validate-"
OWNER = "owner.json"  # beside FOLDER: the process that made the copy


def parse_ports(spec: str) -> list[int]:
    """`30000-31999`, `20001,20005-20010`: the ports the candidate may take, in order."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        low, _, high = part.partition("-")
        try:
            a, b = int(low), int(high or low)
        except ValueError:
            raise UsageError(f"--ports: '{part}' is not a port or a range",
                             hint=f"e.g. --ports {DEFAULT_PORTS}") from None
        if not 1 <= a <= b <= 65535:
            raise UsageError(f"--ports: '{part}' is not within 1-65535, low to high")
        out += range(a, b + 1)
    if not out:
        raise UsageError("--ports names no port", hint=f"e.g. --ports {DEFAULT_PORTS}")
    return list(dict.fromkeys(out))


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(candidates: list[int], n: int, taken: set[int]) -> list[int]:
    """`n` ports of `candidates` that nothing listens on now (and not in `taken`)."""
    found: list[int] = []
    for port in candidates:
        if len(found) == n:
            break
        if port not in taken and _free(port):
            found.append(port)
    if len(found) < n:
        raise DevenvError(f"the candidate needs {n} free ports; only {len(found)} of the "
                          "range are free", hint="give another range: --ports START-END")
    return found


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """`services.api.replicas` = value in a plain mapping, making the mappings on the way."""
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise UsageError(f"--set: '{dotted}' is not a key path", hint="e.g. services.api.port")
    node = doc
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"--set {dotted}: '{part}' is not a mapping")
        node = child
    node[parts[-1]] = value


@dataclass
class Candidate:
    source: Path  # the project copied
    root: Path  # the copy
    ports: dict[str, int] = field(default_factory=dict)  # key path -> the port it got
    services: list[str] = field(default_factory=list)  # as declared

    @property
    def folder(self) -> Path:
        return self.root.parent


def declared_ports(project: Any) -> list[str]:
    """Key paths of every port the project declares (a `config.model.Project`)."""
    keys = [f"services.{name}.port" for name, svc in project.services.items()
            if svc.port is not None]
    if project.ingress.enabled:
        keys.append("ingress.port")
    if project.monitoring.port is not None:
        keys.append("monitoring.port")
    return keys


def make(source: Path, overrides: dict[str, Any], profile: str | None,
         ports: list[int]) -> Candidate:
    """The copy, its override layer written and the whole configuration checked (a
    ConfigError names the candidate's file and key); removed again when that fails."""
    from devenv.config.load import load

    folder = Path(tempfile.mkdtemp(prefix=PREFIX))
    root = folder / FOLDER
    try:
        _write_owner(folder)
        root.mkdir()
        for entry in source.iterdir():
            if entry.name in (".devenv", "devenv.yaml"):
                continue
            (root / entry.name).symlink_to(entry)
        shutil.copyfile(source / "devenv.yaml", root / "devenv.yaml")
        state = StateDir(root)
        state.ensure()
        published = source / ".devenv" / "artifacts"
        if published.is_dir():  # the unpacked copies published services run from
            (state.base / "artifacts").symlink_to(published)
            with contextlib.suppress(FileNotFoundError):
                shutil.copyfile(source / ".devenv" / "artifacts.yaml",
                                state.base / "artifacts.yaml")
        layer = dict(overrides)
        name = _name(source, overrides, profile)
        token = secrets.token_hex(3)
        layer["name"] = copy_name(name, token)
        _write(state.local_overrides, layer)
        project = load(root, profile).project
        if project.cluster.namespace:  # never the running environment's namespace
            set_path(layer, "cluster.namespace", copy_name(project.cluster.namespace, token))
        if project.cluster.provider == "k3d" and not project.cluster.name:
            from devenv.kube.k3d import cluster_name

            set_path(layer, "cluster.name", cluster_name(name, None))  # the project's cluster
        taken: set[int] = set()
        keys = declared_ports(project)
        given = dict(zip(keys, free_ports(ports, len(keys), taken), strict=True))
        for key, port in given.items():
            set_path(layer, key, port)
        _write(state.local_overrides, layer)
        final = load(root, profile).project  # the final layer, checked once more
        return Candidate(source, root, given, list(final.services))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def copy_name(name: str, token: str) -> str:
    """The copy's own name: `<name>-validate-<token>`, the name shortened so the whole stays
    a DNS label (63 characters) with the suffix kept."""
    from devenv.kube.render import slug

    suffix = f"-validate-{token}"
    return slug(name)[:63 - len(suffix)].strip("-") + suffix


def _name(source: Path, overrides: dict[str, Any], profile: str | None) -> str:
    """The project's own name (the copy's folder is not called like the project)."""
    from devenv.config.load import load

    return load(source, profile).name if "name" not in overrides else str(overrides["name"])


def _write(path: Path, data: dict[str, Any]) -> None:
    import io

    from ruamel.yaml import YAML

    buf = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.dump(data, buf)
    write_atomic(path, "# The candidate configuration of `devenv validate`.\n" + buf.getvalue(),
                 mode=PRIVATE_FILE)


def _started(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _write_owner(folder: Path) -> None:
    pid = os.getpid()
    write_atomic(folder / OWNER, json.dumps({"pid": pid, "started": _started(pid)}),
                 mode=PRIVATE_FILE)


def stale(tmp: Path | None = None) -> list[Path]:
    """This user's copies (their folders) whose `devenv validate` is gone: killed before it
    could stop their engine and remove them. A copy not naming its maker yet (being made)
    is left alone."""
    found = []
    for folder in sorted(Path(tmp or tempfile.gettempdir()).glob(f"{PREFIX}*")):
        try:
            if folder.stat().st_uid != os.getuid():
                continue
            owner = json.loads((folder / OWNER).read_text())
            pid, started = int(owner["pid"]), owner["started"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        now = _started(pid)
        if now is None or started is None or abs(now - float(started)) > 1.0:
            found.append(folder)
    return found


def is_copy(root: Path) -> bool:
    """Whether `root` is the copy of a `devenv validate` (as `make` makes it: FOLDER in a
    folder of this user, named PREFIX…, in the temporary folder, naming its maker): only
    such a copy's data may be discarded without a snapshot."""
    folder = root.parent
    try:
        info = folder.lstat()
        return (root.name == FOLDER and folder.name.startswith(PREFIX)
                and folder.parent.resolve() == Path(tempfile.gettempdir()).resolve()
                and info.st_uid == os.geteuid() and (folder / OWNER).is_file())
    except OSError:
        return False


def discard_data(root: Path) -> list[str]:
    """What the copy at `root` left outside its folder when its engine could not stop it
    (the stop failed or took too long, or the engine is gone): its Docker containers,
    networks and data volumes (by its project label, and as its data folders name them),
    and its cluster objects with their claims (as its cluster marker names them). To call
    before the folder goes: nothing finds them after. What could not be removed, said."""
    run = StateDir(root).run
    problems = []
    volumes = {p.read_text().strip(): p.parent.name  # volume -> its service
               for p in StateDir(root).data.glob("*/volume") if p.is_file()}
    if (run / "docker.json").exists() or volumes:
        try:
            _discard_docker(root, volumes)
        except Exception as exc:  # (said; the rest is still tried)
            problems.append(f"its Docker containers and volumes: {exc}")
    marker = run / "kubernetes.json"
    if marker.exists():
        try:
            from devenv.runtime.kubernetes import KubeApi

            found = json.loads(marker.read_text())
            KubeApi.connect(context=found.get("context")).stop(
                found["namespace"], found["selector"], persist_data=False)
        except Exception as exc:
            problems.append(f"its cluster objects: {exc}")
    return problems


def _discard_docker(root: Path, volumes: dict[str, str]) -> None:
    from devenv.data import container

    api = container.api()
    label = {"label": f"{container.PROJECT_LABEL}={root}"}
    for found in api.containers(all=True, filters=label):
        api.remove_container(found["Id"], force=True)
    for net in api.networks(filters=label):
        api.remove_network(net["Id"])
    for volume in api.volumes(filters=label).get("Volumes") or []:
        volumes.setdefault(volume["Name"],
                           str((volume.get("Labels") or {}).get(container.SERVICE_LABEL)))
    for name, service in volumes.items():
        container.remove_volume(service, name)


def remove(candidate: Candidate) -> None:
    remove_folder(candidate.folder)


def remove_folder(folder: Path) -> None:
    """A copy's folder removed, its owner.json last: cut short, what is left is still
    found by `stale` (and removed by the next `validate`)."""
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if entry.name != OWNER:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (folder / OWNER).unlink(missing_ok=True)
        folder.rmdir()


@contextlib.contextmanager
def removed_after(candidate: Candidate) -> Iterator[Candidate]:
    try:
        yield candidate
    finally:
        remove(candidate)
