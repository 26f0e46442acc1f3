"""How the local runtime stops an instance whose command is a shell line: the program the
shell started gets the stop's grace, once, however often a stop is asked; what left the
group for a session of its own is not waited for, and is still stopped."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import psutil

from devenv.runtime.base import InstanceSpec
from devenv.runtime.local import LocalRuntime

PROGRAM = """\
import pathlib, signal, subprocess, sys, time
here = pathlib.Path(sys.argv[1])
def bye(*_):
    (here / "term").write_text("")
    time.sleep(float(sys.argv[2]))
    (here / "finished").write_text("")
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
if sys.argv[3] == "escape":  # a helper in a session of its own
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                              start_new_session=True)
    (here / "helper").write_text(str(helper.pid))
(here / "started").write_text("")
while True:
    time.sleep(1)
"""


async def _until(path: Path, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not path.exists():
            await asyncio.sleep(0.02)


def _spec(tmp_path: Path, grace: float, mode: str, stop_timeout: float) -> InstanceSpec:
    (tmp_path / "program.py").write_text(PROGRAM)
    line = f"{sys.executable} program.py {tmp_path} {grace} {mode}"
    return InstanceSpec("svc", 1, ("/bin/sh", "-c", line), {}, ".", False,
                        stop_timeout=stop_timeout)


def test_a_second_stop_does_not_cut_the_grace_the_first_gave(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = LocalRuntime(tmp_path)
        instance = await runtime.start(_spec(tmp_path, 1.0, "stay", 10.0))
        try:
            await _until(tmp_path / "started")
            first = asyncio.create_task(instance.stop())
            await _until(tmp_path / "term")  # the shell is gone; the program finishes
            await instance.stop()  # (as a retire and the instance's own loop both ask)
            await first
            assert (tmp_path / "finished").exists()
        finally:
            await instance.stop()
            await runtime.close()

    asyncio.run(scenario())


def test_a_helper_in_its_own_session_is_not_waited_for_but_is_stopped(tmp_path: Path) -> None:
    async def scenario() -> float:
        runtime = LocalRuntime(tmp_path)
        instance = await runtime.start(_spec(tmp_path, 0.0, "escape", 20.0))
        try:
            await _until(tmp_path / "started")
            began = time.monotonic()
            await instance.stop()
            return time.monotonic() - began
        finally:
            await instance.stop()
            await runtime.close()

    took = asyncio.run(scenario())
    assert took < 10, took  # not the 20 s grace: the helper never got the signal
    helper = int((tmp_path / "helper").read_text())
    assert not psutil.pid_exists(helper) or \
        psutil.Process(helper).status() == psutil.STATUS_ZOMBIE
