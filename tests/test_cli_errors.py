"""Mistakes on the command line and in shared files get a clear message and the right exit code
(2: bad usage or configuration, 1: the work failed), never a traceback. No engine runs here."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import ENV
from devenv.data.snapshots import SnapshotStore


def devenv(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "devenv", *args], cwd=root, env=ENV,
                            capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "devenv.yaml").write_text(textwrap.dedent("""\
        version: 1
        services:
          cache: {kind: redis, port: 8001}
          api: {command: x, port: 8002}
          web: {command: x}
        """))
    return root


# ---- scale, logs, restart


def test_scale_refuses_what_the_configuration_would(root: Path) -> None:
    unreadable = devenv(root, "scale", "api=²")  # '²'.isdigit() is True; int('²') fails
    assert unreadable.returncode == 2
    assert "cannot read 'api=²'" in unreadable.stderr and "SERVICE=N" in unreadable.stderr
    data = devenv(root, "scale", "cache=2")
    assert data.returncode == 2
    assert "cannot scale cache to 2: a redis service runs exactly one replica" in data.stderr
    too_many = devenv(root, "scale", "api=1000")
    assert too_many.returncode == 2
    assert "cannot scale api to 1000: 1000 is out of range: give 0 to 100" in too_many.stderr
    unknown = devenv(root, "scale", "apo=2")
    assert unknown.returncode == 2 and "no service 'apo' (did you mean 'api'?)" in unknown.stderr
    # a sensible count gets as far as the engine, which is not running here
    fine = devenv(root, "scale", "api=3", "web=0")
    assert fine.returncode == 1 and "no environment is running" in fine.stderr


def test_logs_refuses_a_negative_count_and_an_unknown_service(root: Path) -> None:
    negative = devenv(root, "logs", "-n", "-5")
    assert negative.returncode == 2 and "-5 lines: give 0 or more" in negative.stderr
    unknown = devenv(root, "logs", "nope")
    assert unknown.returncode == 2 and "no service 'nope'" in unknown.stderr
    assert "services: cache, api, web" in unknown.stderr
    close = devenv(root, "logs", "wbe")
    assert close.returncode == 2 and "no service 'wbe' (did you mean 'web'?)" in close.stderr
    # a service that has logs but is no longer declared can still be read
    logs = root / ".devenv/logs"
    logs.mkdir(parents=True)
    (logs / "old.log").write_text("2026-01-01T10:00:00.000000Z 1 out one\n"
                                  "2026-01-01T10:00:01.000000Z 1 out two\n"
                                  "2026-01-01T10:00:02.000000Z 1 out three\n")
    old = devenv(root, "logs", "old", "-n", "2")
    assert old.returncode == 0 and old.stdout.split("\n")[:2] == ["old-1 | two", "old-1 | three"]
    assert devenv(root, "logs", "old", "-n", "0").stdout == ""


def test_restart_takes_services_as_arguments(root: Path) -> None:
    result = devenv(root, "restart", "api")
    assert result.returncode == 1, result.stderr  # parsed: it went on to ask the engine
    assert "no environment is running" in result.stderr


# ---- snapshots


def make_snapshot(root: Path, name: str = "good") -> SnapshotStore:
    store = SnapshotStore(root / ".devenv/snapshots")
    staging = store.staging(name)
    (staging / "cache").mkdir()
    (staging / "cache" / "dump.rdb").write_bytes(b"redis data")
    store.commit(staging, name, {"created": "2026-01-01T10:00:00Z", "created_ts": 1.0,
                                 "automatic": False, "datasets": [],
                                 "services": {"cache": {"kind": "redis", "version": "7"}}})
    return store


def archive(path: Path, manifest: Any, files: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tar:
        entries = {"shared/manifest.json": json.dumps(manifest).encode(),
                   **{f"shared/{k}": v for k, v in (files or {}).items()}}
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def good_manifest() -> dict[str, Any]:
    return {"created": "2026-01-01T10:00:00Z", "services": {"cache": {
        "kind": "redis", "version": "7", "files": {"dump.rdb": {
            "size": 4, "sha256": hashlib.sha256(b"data").hexdigest()}}}}}


def listed(root: Path) -> list[str]:
    result = devenv(root, "snapshot", "list", "--json")
    assert result.returncode == 0, result.stderr
    return [s["name"] for s in json.loads(result.stdout)]


def test_export_to_a_missing_folder_or_a_folder_is_refused(root: Path, tmp_path: Path) -> None:
    make_snapshot(root)
    missing = devenv(root, "snapshot", "export", "good", "-o", str(tmp_path / "nope/x.tar"))
    assert missing.returncode == 2
    assert f"folder {tmp_path / 'nope'} does not exist" in missing.stderr
    folder = devenv(root, "snapshot", "export", "good", "-o", str(tmp_path))
    assert folder.returncode == 2 and "is a folder" in folder.stderr
    assert f"-o {tmp_path / 'good.tar.gz'}" in folder.stderr
    assert not list(tmp_path.glob(".*.tmp"))
    written = devenv(root, "snapshot", "export", "good", "-o", str(tmp_path / "good.tar.gz"))
    assert written.returncode == 0, written.stderr


@pytest.mark.parametrize(("manifest", "message"), [
    ([1, 2], "manifest.json is not a JSON object"),
    ({"services": {}}, "manifest.json has no 'created' time"),
    ({"created": "2026-01-01T10:00:00Z"}, "manifest.json has no 'services'"),
    ({"created": "2026-01-01T10:00:00Z", "services": {"cache": {
        "kind": "redis", "version": "7", "files": ["dump.rdb"]}}},
     "manifest.json: services.cache.files is not a mapping of files"),
    ({"created": "2026-01-01T10:00:00Z", "services": {"../x": {
        "kind": "redis", "version": "7", "files": {}}}},
     "manifest.json: '../x' is not a service name"),
    ({**good_manifest(), "name": 5}, "manifest.json: 'name' is not a string"),
])
def test_import_of_a_bad_manifest_leaves_nothing_behind(root: Path, tmp_path: Path,
                                                        manifest: Any, message: str) -> None:
    file = archive(tmp_path / "shared.tar.gz", manifest, {"cache/dump.rdb": b"data"})
    result = devenv(root, "snapshot", "import", str(file))
    assert result.returncode == 1
    assert f"cannot import {file}: {message}" in result.stderr
    folder = root / ".devenv/snapshots"
    assert [p.name for p in folder.iterdir()] == []
    assert listed(root) == []


def test_import_checks_every_file_before_the_snapshot_appears(root: Path,
                                                              tmp_path: Path) -> None:
    file = archive(tmp_path / "shared.tar", good_manifest(), {"cache/dump.rdb": b"DATA"})
    result = devenv(root, "snapshot", "import", str(file))
    assert result.returncode == 1 and "the snapshot in it is damaged" in result.stderr
    assert "cache/dump.rdb: checksum differs" in result.stderr
    assert not any((root / ".devenv/snapshots").iterdir())
    file = archive(tmp_path / "shared.tar", good_manifest(), {"cache/dump.rdb": b"data"})
    imported = devenv(root, "snapshot", "import", str(file))
    assert imported.returncode == 0, imported.stderr
    assert listed(root) == ["shared"]


def test_import_of_a_truncated_or_missing_file(root: Path, tmp_path: Path) -> None:
    make_snapshot(root)
    whole = tmp_path / "good.tar.gz"
    devenv(root, "snapshot", "export", "good", "-o", str(whole))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    result = devenv(root, "snapshot", "import", str(cut), "--name", "again")
    assert result.returncode == 1 and f"cannot import {cut}" in result.stderr
    assert "export" in result.stderr  # the hint: where such a file comes from
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 50)
    result = devenv(root, "snapshot", "import", str(garbage), "--name", "again")
    assert result.returncode == 1 and f"cannot import {garbage}" in result.stderr
    result = devenv(root, "snapshot", "import", str(tmp_path), "--name", "again")
    assert result.returncode == 2 and "is a folder" in result.stderr
    assert listed(root) == ["good"]
    assert sorted(p.name for p in (root / ".devenv/snapshots").iterdir()) == ["good"]


def test_list_skips_a_bad_snapshot_folder_with_a_warning(root: Path) -> None:
    store = make_snapshot(root)
    bad = store.folder / "half"  # as a failed import of an older devenv left it
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"name": "half", "services": {}}))
    listing = devenv(root, "snapshot", "list")
    assert listing.returncode == 0
    assert "good" in listing.stdout and "half" not in listing.stdout
    assert ("skipped .devenv/snapshots/half: manifest.json has no 'created' time "
            "(`devenv snapshot delete half` if it is not needed)") in listing.stderr
    (bad / "manifest.json").write_text("[1, 2]")
    assert listed(root) == ["good"]
    refused = devenv(root, "snapshot", "export", "half", "-o", str(root / "half.tar"))
    assert refused.returncode == 1
    assert "snapshot 'half' is damaged: manifest.json is not a JSON object" in refused.stderr
    deleted = devenv(root, "snapshot", "delete", "half")
    assert deleted.returncode == 0, deleted.stderr
    assert not bad.exists() and listed(root) == ["good"]
