"""The snapshot store: .devenv/snapshots/<name>/ with a manifest of checksums.

A snapshot is built in a staging folder and appears under its name only by a final rename,
after its files and manifest are on disk: a crash mid-save leaves nothing that lists as
valid. Restore verifies every checksum first. Import never writes outside the store, and
checks the manifest and every file before the snapshot appears under its name. A folder whose
manifest is missing or malformed never lists as a snapshot (`scan` names it as damaged).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from devenv.config.schema import did_you_mean
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import PRIVATE_FILE, private_dir, private_opener
from devenv.wire import SnapshotSummary

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MANIFEST = "manifest.json"
FORMAT = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """Why a manifest cannot describe a snapshot."""


def check_manifest(manifest: Any) -> dict[str, Any]:
    """The manifest, if it describes a snapshot fully (every key that listing, verifying and
    restoring read, of the right type); else ManifestError saying what is wrong."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{MANIFEST} is not a JSON object")
    if not isinstance(manifest.get("created"), str):
        raise ManifestError(f"{MANIFEST} has no 'created' time")
    for key_name, types, shown in (("created_ts", (int, float), "a number"),
                                   ("automatic", (bool,), "true or false"),
                                   ("name", (str,), "a string")):
        if key_name in manifest and (not isinstance(manifest[key_name], types)
                                     or (bool not in types and isinstance(manifest[key_name],
                                                                          bool))):
            raise ManifestError(f"{MANIFEST}: '{key_name}' is not {shown}")
    datasets = manifest.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise ManifestError(f"{MANIFEST}: 'datasets' is not a list of names")
    services = manifest.get("services")
    if not isinstance(services, dict):
        raise ManifestError(f"{MANIFEST} has no 'services'")
    for service, entry in services.items():
        if not NAME.match(service) or ".." in service:
            raise ManifestError(f"{MANIFEST}: '{service}' is not a service name")
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str) \
                or not isinstance(entry.get("version"), str):
            raise ManifestError(f"{MANIFEST}: services.{service} needs a 'kind' and a "
                                "'version'")
        files = entry.get("files")
        if not isinstance(files, dict):
            raise ManifestError(f"{MANIFEST}: services.{service}.files is not a mapping of "
                                "files")
        for rel, meta in files.items():
            parts = PurePosixPath(rel).parts
            if not parts or rel.startswith("/") or ".." in parts:
                raise ManifestError(f"{MANIFEST}: unsafe file name {rel!r}")
            if not isinstance(meta, dict) or not isinstance(meta.get("size"), int) \
                    or isinstance(meta.get("size"), bool) or meta["size"] < 0 \
                    or not isinstance(meta.get("sha256"), str) \
                    or not _SHA256.match(meta["sha256"]):
                raise ManifestError(f"{MANIFEST}: services.{service}.files.{rel} needs a "
                                    "'size' and a 'sha256'")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """A snapshot folder's manifest, checked (ManifestError when it is missing or bad)."""
    try:
        text = (folder / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"it holds no {MANIFEST}") from None
    except OSError as exc:
        raise ManifestError(f"cannot read {MANIFEST}: {exc.strerror}") from None
    except ValueError:
        raise ManifestError(f"{MANIFEST} is not UTF-8 text") from None
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{MANIFEST} is not valid JSON ({exc})") from None
    return check_manifest(manifest)


@dataclass(frozen=True)
class Snapshot:
    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def created(self) -> str:
        return str(self.manifest["created"])

    @property
    def automatic(self) -> bool:
        return bool(self.manifest.get("automatic"))

    @property
    def size(self) -> int:
        return sum(f["size"] for s in self.manifest["services"].values()
                   for f in s["files"].values())

    def summary(self) -> SnapshotSummary:
        return SnapshotSummary(
            name=self.name, created=self.created, automatic=self.automatic,
            size_bytes=self.size, datasets=list(self.manifest.get("datasets", [])),
            services={n: {"kind": s["kind"], "version": s["version"]}
                      for n, s in self.manifest["services"].items()})


def check_name(name: str) -> str:
    if not NAME.match(name) or ".." in name:
        raise UsageError(f"'{name}' is not a valid snapshot name",
                         hint="use letters, digits, '.', '_' and '-' (up to 64), starting "
                         "with a letter or digit")
    return name


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SnapshotStore:
    def __init__(self, folder: Path):
        self.folder = folder

    def staging(self, name: str) -> Path:
        check_name(name)
        if (self.folder / name).exists():
            raise UsageError(f"a snapshot named '{name}' already exists",
                             hint="choose another name, or `devenv snapshot delete` it first")
        private_dir(self.folder)
        return Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-{name}-", dir=self.folder))

    def discard(self, staging: Path) -> None:
        """Remove a work folder whole (a second pass for files that appeared meanwhile)."""
        for _ in range(3):
            shutil.rmtree(staging, ignore_errors=True)
            if not staging.exists():
                return

    def commit(self, staging: Path, name: str, manifest: dict[str, Any]) -> Snapshot:
        """Checksum everything in `staging`, write the manifest last, then rename."""
        for service, entry in manifest["services"].items():
            root = staging / service
            entry["files"] = {
                str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": sha256(p)}
                for p in sorted(root.rglob("*")) if p.is_file()}
        manifest.update(format=FORMAT, name=name)
        write_atomic(staging / MANIFEST, json.dumps(manifest, indent=2), mode=PRIVATE_FILE)
        _fsync_tree(staging)
        target = self.folder / name
        if target.exists():
            self.discard(staging)
            raise UsageError(f"a snapshot named '{name}' already exists")
        staging.rename(target)
        return Snapshot(name, target, manifest)

    def all(self) -> list[Snapshot]:
        """The snapshots, oldest first (folders that are not complete snapshots left out)."""
        return self.scan()[0]

    def scan(self) -> tuple[list[Snapshot], list[tuple[Path, str]]]:
        """The snapshots, oldest first, and the folders that should be snapshots but whose
        manifest is missing or malformed, each with why (work folders are not listed)."""
        if not self.folder.is_dir():
            return [], []
        found, damaged = [], []
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                found.append(Snapshot(path.name, path, read_manifest(path)))
            except ManifestError as exc:
                damaged.append((path, str(exc)))
        return sorted(found, key=lambda s: s.manifest.get("created_ts", 0)), damaged

    def get(self, name: str) -> Snapshot:
        check_name(name)
        snaps, damaged = self.scan()
        for snap in snaps:
            if snap.name == name:
                return snap
        for path, why in damaged:
            if path.name == name:
                raise DevenvError(f"snapshot '{name}' is damaged: {why}",
                                  hint=f"delete it with `devenv snapshot delete {name}`")
        names = [s.name for s in snaps]
        raise UsageError(f"no snapshot '{name}'{did_you_mean(name, names)}",
                         hint="see `devenv snapshot list`")

    def verify(self, name: str, undone: str = "nothing was restored") -> Snapshot:
        """The snapshot, after checking every file against the manifest."""
        snap = self.get(name)
        problems = file_problems(snap.path, snap.manifest)
        if problems:
            raise DevenvError(f"snapshot '{name}' is damaged; {undone}",
                              details=problems[:10],
                              hint="restore another snapshot (`devenv snapshot list`)")
        return snap

    def delete(self, name: str) -> None:
        """Delete a snapshot, or a damaged one's folder."""
        check_name(name)
        path = self.folder / name
        if not path.is_dir():
            self.get(name)  # no such snapshot: says so, with the close names
        doomed = self.folder / f".deleting-{os.getpid()}-{name}-{time.time_ns()}"
        path.rename(doomed)  # gone from the list at once, even if the removal is cut
        shutil.rmtree(doomed, ignore_errors=True)

    def prune_automatic(self, keep: int) -> list[str]:
        autos = [s for s in self.all() if s.automatic]
        doomed = autos[: max(len(autos) - keep, 0)]
        for snap in doomed:
            self.delete(snap.name)
        return [s.name for s in doomed]

    def cleanup(self) -> None:
        """Remove what a crash left: staging, importing and half-deleted folders whose
        process is gone. Work in progress (a concurrent `snapshot import`) is left alone."""
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                kind, _, rest = path.name.partition("-")
                if kind in (".staging", ".deleting", ".importing") and not _owner_alive(rest):
                    shutil.rmtree(path, ignore_errors=True)

    # ---- sharing

    def export(self, name: str, file: Path) -> Path:
        if file.is_dir():
            raise UsageError(f"{file} is a folder; give the name of the file to write",
                             hint=f"e.g. -o {file / (name + '.tar.gz')}")
        if not file.parent.is_dir():
            raise UsageError(f"cannot write {file}: folder {file.parent} does not exist",
                             hint="create the folder first, or write the file elsewhere")
        snap = self.verify(name, undone="nothing was exported")
        tmp = file.with_name(f".{file.name}.tmp")
        gz = file.name.endswith((".gz", ".tgz"))
        tmp.unlink(missing_ok=True)
        try:
            # owner-only from its creation (a shared folder's other users never get it open)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
            with os.fdopen(fd, "wb") as out, \
                    tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) if gz \
                    else tarfile.open(fileobj=out, mode="w") as tar:
                tar.add(snap.path, arcname=name, recursive=True)
            tmp.replace(file)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DevenvError(f"cannot write {file}: {exc.strerror or exc}") from exc
        return file

    def import_(self, file: Path, name: str | None = None) -> Snapshot:
        """Add the snapshot in an exported file. Everything is checked in a work folder (the
        archive's paths, the manifest, every file's size and checksum) before the snapshot
        appears under its name; a failed import leaves nothing behind."""
        if file.is_dir():
            raise UsageError(f"{file} is a folder", hint="give the file written by "
                             "`devenv snapshot export`")
        if not file.is_file():
            raise UsageError(f"no file {file}")
        private_dir(self.folder)
        staging = Path(tempfile.mkdtemp(prefix=f".importing-{os.getpid()}-", dir=self.folder))
        hint = "the file must come from `devenv snapshot export`"
        try:
            top = self._extract(file, staging)
            manifest = read_manifest(staging)
            final = check_name(name or manifest.get("name") or top)
            if (self.folder / final).exists():
                raise UsageError(f"a snapshot named '{final}' already exists",
                                 hint="import it under another name with --name")
            problems = file_problems(staging, manifest)
            if problems:
                raise DevenvError(f"cannot import {file}: the snapshot in it is damaged",
                                  details=problems[:10], hint=hint)
            manifest["name"] = final
            write_atomic(staging / MANIFEST, json.dumps(manifest, indent=2), mode=PRIVATE_FILE)
            _fsync_tree(staging)
            staging.rename(self.folder / final)  # the last step: now it lists
            return Snapshot(final, self.folder / final, manifest)
        except ManifestError as exc:
            raise DevenvError(f"cannot import {file}: {exc}", hint=hint) from exc
        except (EOFError, zlib.error, lzma.LZMAError) as exc:
            raise DevenvError(f"cannot import {file}: the file is incomplete or corrupted "
                              f"({exc})", hint=hint) from exc
        except (OSError, ValueError, tarfile.TarError) as exc:
            raise DevenvError(f"cannot import {file}: {exc}", hint=hint) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _extract(self, file: Path, staging: Path) -> str:
        """Extract a shared snapshot file, member by member; anything that could land
        outside `staging` (absolute paths, '..', links, devices) is refused."""
        top: str | None = None
        with tarfile.open(file, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not parts or member.name.startswith("/") or ".." in parts:
                    raise ValueError(f"unsafe path in archive: {member.name!r}")
                if top is None:
                    top = parts[0]
                if parts[0] != top:
                    raise ValueError("the archive holds more than one snapshot")
                rel = Path(*parts[1:]) if len(parts) > 1 else Path(".")
                target = (staging / rel).resolve()
                if not target.is_relative_to(staging.resolve()):
                    raise ValueError(f"unsafe path in archive: {member.name!r}")
                if member.isdir():
                    target.mkdir(mode=0o700, parents=True, exist_ok=True)
                elif member.isfile():
                    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    with open(target, "wb", opener=private_opener) as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                else:
                    raise ValueError(f"unsupported entry in archive: {member.name!r}")
        if top is None:
            raise ValueError("the archive is empty")
        return top


def file_problems(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Every file of a snapshot folder that differs from its (checked) manifest."""
    problems = []
    for service, entry in manifest["services"].items():
        root = folder / service
        on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} \
            if root.is_dir() else set()
        for rel, meta in entry["files"].items():
            path = root / rel
            if rel not in on_disk:
                problems.append(f"{service}/{rel}: missing")
            elif path.stat().st_size != meta["size"]:
                problems.append(f"{service}/{rel}: {path.stat().st_size} bytes, the "
                                f"manifest says {meta['size']} (truncated?)")
            elif sha256(path) != meta["sha256"]:
                problems.append(f"{service}/{rel}: checksum differs (corrupted or changed)")
        problems += [f"{service}/{rel}: not in the manifest"
                     for rel in on_disk - set(entry["files"])]
    return problems


def _owner_alive(rest: str) -> bool:
    """Whether the process named at the start of a work folder's name still runs."""
    pid = rest.partition("-")[0]
    if not pid.isdigit():
        return False  # an older layout, or not ours: nothing is working on it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def now_manifest(project: str, automatic: bool, datasets: list[str]) -> dict[str, Any]:
    moment = datetime.now(UTC)
    return {"project": project, "created": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "created_ts": moment.timestamp(), "automatic": automatic, "datasets": datasets,
            "services": {}}
