"""Children started from the engine's loop write to real pipes: a program may open
/dev/stdout (uvloop's own PIPE is a socket pair, which cannot be opened by path)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest
import uvloop

from devenv.core import eventloop
from devenv.core.children import spawn

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}

WRITES_BY_PATH = ("import sys\n"
                  "open('/dev/stdout', 'w').write('out by path\\n')\n"
                  "open('/dev/stderr', 'w').write('err by path\\n')\n"
                  "sys.exit(3)\n")


def run(loop: str, main: Callable[[], object]) -> object:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(main())  # type: ignore[arg-type]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_child_can_open_dev_stdout_and_its_output_and_exit_code_come_back(loop: str
                                                                            ) -> None:
    async def main() -> tuple[bytes, bytes, int | None, int]:
        proc = await spawn([sys.executable, "-c", WRITES_BY_PATH])
        out, err = await proc.communicate()
        return out, err, proc.returncode, await proc.exited

    assert run(loop, main) == (b"out by path\n", b"err by path\n", 3, 3)


@pytest.mark.parametrize("loop", LOOPS)
def test_merged_stderr_comes_in_stdout_in_order_and_lines_can_be_read_as_they_come(
        loop: str) -> None:
    async def main() -> list[bytes]:
        proc = await spawn([sys.executable, "-u", "-c", WRITES_BY_PATH],
                              merge_stderr=True)
        assert proc.stdout is not None and proc.stderr is None
        lines = [await proc.stdout.readline(), await proc.stdout.readline(),
                 await proc.stdout.readline()]
        await proc.wait()
        return lines

    assert run(loop, main) == [b"out by path\n", b"err by path\n", b""]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_childs_pipes_are_closed_once_it_is_read_to_the_end(loop: str) -> None:
    """No descriptor is left open by 20 children read to their end (uvloop keeps a read
    pipe's transport open after EOF unless its protocol says not to)."""
    def open_fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    async def main() -> tuple[set[str], set[str]]:
        await (await spawn(["true"])).wait()  # (what a loop opens once, and keeps)
        before = open_fds()
        for _ in range(20):
            proc = await spawn([sys.executable, "-c", "print('hi')"])
            assert await proc.communicate() == (b"hi\n", b"") and proc.returncode == 0
        for _ in range(3):  # (the callbacks the pipes' ends queued)
            await asyncio.sleep(0.01)
        return before, open_fds()

    before, after = run(loop, main)
    assert after - before == set()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_child_gets_only_its_stdio_and_a_job_it_leaves_does_not_hold_its_output(
        loop: str) -> None:
    """uvloop's own spawning left its inheritable copies of a child's stdio open in the
    child: a background job whose output went elsewhere still held the pipes, and reading
    the child to its end took the job's 3 s."""
    async def main() -> tuple[bytes, tuple[bytes, bytes], float]:
        listing = await spawn([sys.executable, "-c",
                                  "import os; print(sorted(os.listdir('/proc/self/fd')))"])
        fds = (await listing.communicate())[0]
        began = time.monotonic()
        proc = await spawn(["sh", "-c", "sleep 3 >/dev/null 2>&1 & echo started"])
        out = await proc.communicate()
        return fds, out, time.monotonic() - began

    fds, out, took = run(loop, main)
    assert fds == b"['0', '1', '2', '3']\n"  # (3: the listing's own)
    assert out == (b"started\n", b"") and took < 2


def test_a_descriptor_the_engine_was_given_reaches_no_child() -> None:
    """uvloop does not close a child's other descriptors when the loop spawns it (as the
    migration's PostgreSQL server is): one the engine's starter left inheritable is marked
    private at its start. (Run in a process of its own, given an inheritable descriptor as
    the engine might be.)"""
    check = textwrap.dedent("""
        import asyncio, os, sys, uvloop
        from devenv.core.children import keep_descriptors_private
        given = int(sys.argv[1])
        assert os.get_inheritable(given)
        keep_descriptors_private()
        assert not os.get_inheritable(given)
        async def main():
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", f"import os; os.fstat({given})",
                stderr=asyncio.subprocess.PIPE)
            err = await proc.stderr.read()
            await proc.wait()
            return proc.returncode, err
        code, err = uvloop.run(main())
        assert code == 1 and b"Bad file descriptor" in err, (code, err)
        print("private")
        """)
    given, other_end = os.pipe()
    try:
        done = subprocess.run([sys.executable, "-c", check, str(given)], pass_fds=(given,),
                              capture_output=True, text=True, timeout=30)
    finally:
        os.close(given)
        os.close(other_end)
    assert done.stdout == "private\n", done.stderr


def test_the_engine_runs_on_uvloop_unless_asked_for_asyncio(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.LOOP_VAR, raising=False)
    assert eventloop.loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv(eventloop.LOOP_VAR, "asyncio")
    assert eventloop.loop_factory() is asyncio.new_event_loop
    assert eventloop.run(asyncio.sleep(0, "done")) == "done"
