"""The snapshot store's clean-up takes only what dead processes left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devenv.data.snapshots import SnapshotStore


def test_cleanup_keeps_work_in_progress_and_removes_what_the_dead_left(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    gone = int(dead.stdout)
    alive = os.getpid()  # stands for a concurrent `devenv snapshot import`
    (tmp_path / f".importing-{alive}-abc").mkdir()
    (tmp_path / f".staging-{alive}-mine-x").mkdir()
    (tmp_path / f".importing-{gone}-abc").mkdir()
    (tmp_path / f".staging-{gone}-before-x").mkdir()
    (tmp_path / f".deleting-{gone}-old-1").mkdir()
    (tmp_path / "kept").mkdir()
    SnapshotStore(tmp_path).cleanup()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".importing-{alive}-abc", f".staging-{alive}-mine-x", "kept"])
