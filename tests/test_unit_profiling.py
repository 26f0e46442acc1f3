"""`devenv profile`'s pure parts: reading py-spy's speedscope files and V8's .cpuprofile,
the top functions by self and total time, the SVG flame graph, which process is sampled,
and whether the OS lets a profiler attach (decided on injected facts: this machine runs as
root with CAP_SYS_PTRACE and no Yama)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from devenv.checks import profiler_check
from devenv.core.errors import DevenvError
from devenv.engine.profiler import Profiler, choose, inspector_left_open, json_in, rss_window
from devenv.profiling import flame, speedscope, top
from devenv.profiling.inspector import trusted_url
from devenv.profiling.permissions import Facts, decide
from devenv.runtime.base import Target

# as py-spy writes it (--format speedscope --function): stacks root first, seconds
PY_SPY = {
    "$schema": speedscope.SCHEMA,
    "shared": {"frames": [
        {"name": "<module>", "file": "/app/hot.py", "line": 1, "col": None},
        {"name": "handle", "file": "/app/hot.py", "line": 30, "col": None},
        {"name": "crunch", "file": "/app/hot.py", "line": 10, "col": None},
        {"name": "select", "file": "/usr/lib/selectors.py", "line": 400, "col": None},
    ]},
    "profiles": [
        {"type": "sampled", "name": "Thread 1", "unit": "seconds", "startValue": 0,
         "endValue": 1, "samples": [[0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 3]],
         "weights": [0.01, 0.01, 0.01, 0.01]},
        {"type": "sampled", "name": "Thread 2", "unit": "milliseconds", "startValue": 0,
         "endValue": 1, "samples": [[0, 1, 2]], "weights": [10]},
    ],
}


def cpuprofile() -> dict[str, object]:
    """(root) → main → {work → work (recursion), (idle)}; one sample each, 1 ms apart."""
    def node(i: int, name: str, children: list[int], line: int = 0) -> dict[str, object]:
        return {"id": i, "callFrame": {"functionName": name, "url": "file:///app/hot.js",
                                       "lineNumber": line, "columnNumber": 0},
                "children": children}
    return {"nodes": [node(1, "(root)", [2, 5]), node(2, "main", [3], 0),
                      node(3, "work", [4], 4), node(4, "work", [], 4), node(5, "(idle)", [])],
            "startTime": 0, "endTime": 5000, "samples": [4, 4, 3, 2, 5],
            "timeDeltas": [0, 1000, 1000, 1000, 1000]}


def test_py_spy_speedscope_merges_threads_in_seconds_and_the_hot_function_tops_self() -> None:
    samples = speedscope.from_speedscope(PY_SPY)
    assert samples.seconds == pytest.approx(0.05)
    first = top.top_self(samples)[0]
    assert (first.frame.name, first.frame.line) == ("crunch", 10)
    assert first.self_s == pytest.approx(0.04) and first.self_pct == pytest.approx(80)
    total = {r.frame.name: r for r in top.top_total(samples)}
    assert total["<module>"].total_pct == pytest.approx(100)
    assert total["<module>"].self_s == 0
    assert total["handle"].total_s == pytest.approx(0.04)


def test_cpuprofile_drops_idle_counts_recursion_once_and_weighs_by_time() -> None:
    samples = speedscope.from_cpuprofile(cpuprofile())
    # the idle sample is not work; the pseudo root is not a function
    assert all(samples.frames[i].name not in ("(idle)", "(root)")
               for stack, _ in samples.stacks for i in stack)
    assert len(samples.stacks) == 4
    assert samples.seconds == pytest.approx(0.004)
    ranked = {r.frame.name: r for r in top.rank(samples)}
    assert ranked["work"].self_s == pytest.approx(0.003)
    # work → work: its total counts each sample once, not twice
    assert ranked["work"].total_pct == pytest.approx(75)
    assert ranked["main"].total_pct == pytest.approx(100)
    assert samples.frames[samples.stacks[0][0][-1]].line == 5  # V8's lines count from 0


def test_speedscope_written_reads_back_the_same() -> None:
    samples = speedscope.from_cpuprofile(cpuprofile())
    again = speedscope.from_speedscope(json.loads(json.dumps(
        speedscope.to_speedscope(samples, "api-1"))))
    assert speedscope.folded(again) == speedscope.folded(samples)
    assert speedscope.folded(samples)["main (hot.js:1);work (hot.js:5);work (hot.js:5)"] == \
        pytest.approx(0.002)


@pytest.mark.parametrize("doc", [{}, {"profiles": "x"}, [1, 2], {"profiles": [
    {"type": "sampled", "samples": [[7]], "weights": [1]}], "shared": {"frames": []}}])
def test_what_is_not_a_speedscope_profile_is_refused(doc: object) -> None:
    with pytest.raises(speedscope.ProfileFormatError):
        speedscope.from_speedscope(doc)


def test_flame_graph_is_svg_with_boxes_as_wide_as_their_time_and_escaped_names() -> None:
    samples = speedscope.Samples()
    a, b = samples.frame(speedscope.Frame("main", "app.py", 1)), \
        samples.frame(speedscope.Frame("<lambda> & co", "app.py", 9))
    samples.add((a, b), 3.0)
    samples.add((a,), 1.0)
    svg = flame.render(samples, "api-1 <py-spy>")
    root = ET.fromstring(svg)  # well-formed, names escaped
    ns = "{http://www.w3.org/2000/svg}"
    boxes = {g.find(f"{ns}title").text.split(" (")[0]: float(g.find(f"{ns}rect").get("width"))
             for g in root.iter(f"{ns}g")}
    assert boxes["main"] == pytest.approx(boxes["all"])
    assert boxes["<lambda> & co"] == pytest.approx(0.75 * boxes["main"])
    assert "no samples" in flame.render(speedscope.Samples(), "idle")


def test_the_sampled_process_is_the_topmost_python_or_the_innermost_node() -> None:
    py = [Target("1", "sh"), Target("2", "python3.11", "1"), Target("3", "python3.11", "2")]
    assert choose(py) is not None and choose(py).target.id == "2"  # type: ignore[union-attr]
    npm = [Target("1", "node"), Target("2", "sh", "1"), Target("3", "node", "2"),
           Target("4", "node", "3"), Target("5", "esbuild", "4")]
    # npm (node) → sh → node (watcher) → node (the server): the one running no node
    chosen = choose(npm)
    assert chosen is not None and (chosen.language, chosen.target.id) == ("node", "4")
    assert choose([Target("1", "ruby")]) is None


def test_json_in_skips_what_a_tool_prints_around_its_document() -> None:
    out = b'py-spy> Sampling process 100 times a second\n\n{"a": [1, {"b": 2}]}\npy-spy> Wrote'
    assert json_in(out) == {"a": [1, {"b": 2}]}
    with pytest.raises(ValueError):
        json_in(b"Error: Permission denied")


def test_rss_window_min_avg_max() -> None:
    window = rss_window("api-1", [300, 100, 200])
    assert (window.min_bytes, window.avg_bytes, window.max_bytes, window.samples) == \
        (100, 200, 300, 3)
    assert rss_window("api-2", []).samples == 0


ROOT_CAP = Facts(euid=0, cap_sys_ptrace=True, yama_scope=None, in_container=True)
USER = Facts(euid=1000, cap_sys_ptrace=False, yama_scope=0, in_container=False)


@pytest.mark.parametrize(("facts", "allowed", "fix"), [
    (ROOT_CAP, True, ""),  # this machine
    (USER, True, ""),  # a user's own processes, no Yama restriction
    (Facts(1000, False, None, False), True, ""),
    (Facts(1000, False, 1, False), False, "echo 0 > /proc/sys/kernel/yama/ptrace_scope"),
    (Facts(1000, False, 2, False), False, "echo 0 > /proc/sys/kernel/yama/ptrace_scope"),
    (Facts(0, True, 1, False), True, ""),  # root with the capability passes scope 1 and 2
    (Facts(0, True, 3, False), False, "reboot"),  # 3: nobody, until a reboot
    (Facts(0, False, None, True), False, "--cap-add SYS_PTRACE"),  # a container without it
    (Facts(0, False, 0, True), False, "--cap-add SYS_PTRACE"),
])
def test_whether_a_profiler_may_attach_and_the_fix(facts: Facts, allowed: bool, fix: str
                                                   ) -> None:
    verdict = decide(facts)
    assert verdict.allowed is allowed
    assert fix in verdict.fix
    if not allowed:
        assert verdict.reason


def test_doctor_warns_with_the_fix_when_attaching_is_forbidden() -> None:
    check = profiler_check(Facts(1000, False, 1, False))
    assert check.status == "warn" and "ptrace_scope is 1" in check.message
    assert "echo 0 > /proc/sys/kernel/yama/ptrace_scope" in check.fix
    assert profiler_check(ROOT_CAP).status == "ok"


def test_profile_refuses_to_attach_with_the_fix_when_the_os_forbids_it(tmp_path: Path) -> None:
    profiler = Profiler(tmp_path, facts=lambda: Facts(1000, False, 1, False))
    with pytest.raises(DevenvError) as caught:
        profiler._check_attach("api-1")
    assert caught.value.exit_code == 1
    assert "cannot attach a profiler to api-1: kernel.yama.ptrace_scope is 1" in \
        caught.value.message
    assert caught.value.hint and "echo 0 > /proc/sys/kernel/yama/ptrace_scope" in \
        caught.value.hint
    Profiler(tmp_path, facts=lambda: ROOT_CAP)._check_attach("api-1")  # this machine: allowed


@pytest.mark.parametrize(("url", "trusted"), [
    ("ws://127.0.0.1:9229/0f2c", True),
    ("ws://127.0.0.1:9230/0f2c", False),  # another port than the one asked
    ("ws://evil.example:9229/0f2c", False),
    ("ws://localhost:9229/0f2c", False),
    ("ws://10.0.0.5:9229/0f2c", False),
    ("wss://127.0.0.1:9229/0f2c", False),
    ("ws://user:pw@127.0.0.1:9229/0f2c", False),
    ("ws://127.0.0.1:99999/0f2c", False),
    (None, False), (42, False),
])
def test_only_a_loopback_websocket_at_the_asked_port_is_followed(url: object, trusted: bool
                                                                   ) -> None:
    assert (trusted_url(url, 9229) is not None) is trusted


def test_the_inspector_ports_left_open_are_read_from_the_tools_stderr() -> None:
    said = ("Debugger listening\ninspector: opened 127.0.0.1:9229\n"
            "inspector: opened 127.0.0.1:9230\ninspector: closed 127.0.0.1:9230\n")
    assert inspector_left_open(said) == [9229]
    assert inspector_left_open(said + "inspector: closed 127.0.0.1:9229\n") == []
