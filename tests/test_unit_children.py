"""Children started from the engine's loop write to real pipes: a program may open
/dev/stdout (uvloop's own PIPE is a socket pair, which cannot be opened by path)."""

from __future__ import annotations

import asyncio
import sys
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
        proc, exited = await spawn([sys.executable, "-c", WRITES_BY_PATH])
        out, err = await proc.communicate()
        return out, err, proc.returncode, await exited

    assert run(loop, main) == (b"out by path\n", b"err by path\n", 3, 3)


@pytest.mark.parametrize("loop", LOOPS)
def test_merged_stderr_comes_in_stdout_in_order_and_lines_can_be_read_as_they_come(
        loop: str) -> None:
    async def main() -> list[bytes]:
        proc, _ = await spawn([sys.executable, "-u", "-c", WRITES_BY_PATH],
                              merge_stderr=True)
        assert proc.stdout is not None and proc.stderr is None
        lines = [await proc.stdout.readline(), await proc.stdout.readline(),
                 await proc.stdout.readline()]
        await proc.wait()
        return lines

    assert run(loop, main) == [b"out by path\n", b"err by path\n", b""]


def test_the_engine_runs_on_uvloop_unless_asked_for_asyncio(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.LOOP_VAR, raising=False)
    assert eventloop.loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv(eventloop.LOOP_VAR, "asyncio")
    assert eventloop.loop_factory() is asyncio.new_event_loop
    assert eventloop.run(asyncio.sleep(0, "done")) == "done"
