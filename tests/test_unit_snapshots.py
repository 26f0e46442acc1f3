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



def test_a_failing_helper_stops_the_others_before_its_caller_goes_on(tmp_path: Path) -> None:
    """A snapshot's stores are copied at the same time; when one copy fails, the other
    helpers (real processes) are stopped and have ended before the failure is raised, so
    none is left writing into the work folder that is removed next."""
    import asyncio

    import psutil
    import pytest

    from devenv.core.errors import DevenvError
    from devenv.data.base import all_or_none, run_tool

    marker = str(tmp_path / "written-late")
    slow = [sys.executable, "-c", "import time, sys; time.sleep(30); open(sys.argv[1], 'w')",
            marker]
    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]

    async def save() -> list[psutil.Process]:
        with pytest.raises(DevenvError, match=r"^cache: copy failed \(exit code 3\)$"):
            await all_or_none(run_tool(slow, what="db: copy"),
                              run_tool(failing, what="cache: copy"))
        # (still inside the loop, as the engine is: what is left running now stays running)
        return [p for p in psutil.process_iter(["cmdline"])
                if marker in (p.info["cmdline"] or [])]

    assert asyncio.run(asyncio.wait_for(save(), 20)) == []
