"""`devenv debug`: services under real debuggers, driven by real protocol clients (DAP for
debugpy, the Chrome DevTools Protocol for node --inspect)."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cdp import CdpClient
from dap import DapClient

from conftest import FIXTURES, Project, free_ports, wait_for
from test_shop import copy_shop

NODE = shutil.which("node")


def _logs(project: Project, service: str) -> str:
    return project.devenv("logs", service, "--verbose", "-n", "200").stdout


def test_debug_off_restores_replicas_reload_keeps_debugger(project: Project) -> None:
    port, debug_port = free_ports(2)
    project.services(f"""
        api:
          command: python svc.py
          port: {port}
          replicas: 2
          health: {{http: /healthz}}
          debug: {{port: {debug_port}}}
        odd:
          command: [/bin/sleep, "600"]
    """)
    (project.root / ".vscode").mkdir()
    launch_json = project.root / ".vscode/launch.json"
    mine = ('{\n  "version": "0.2.0",\n  "configurations": [\n'
            '    {"name": "mine", "type": "node", "request": "launch"},\n  ]\n}\n')
    project.up()

    unknown = project.devenv("debug", "odd", "--allow-root")
    assert unknown.returncode == 2, unknown.stderr
    assert "services.odd.debug: {language: python}" in unknown.stderr
    assert project.service("odd")["state"] == "healthy"  # left alone

    # devenv runs as root here: its debug port would give root to any local user
    refused = project.devenv("debug", "api")
    assert refused.returncode == 2, refused.stderr
    assert "code execution as root to anyone on this machine" in refused.stderr
    assert "--allow-root" in refused.stderr
    # a launch.json that cannot be read stops it before anything changes
    launch_json.write_text('{"configurations": [ {"name": }')
    broken = project.devenv("debug", "api", "--allow-root")
    assert broken.returncode == 1 and "cannot read" in broken.stderr, broken.stderr
    assert launch_json.read_text() == '{"configurations": [ {"name": }'
    api = project.service("api")
    assert "debug" not in api and api["replicas"] == {"ready": 2, "desired": 2}

    launch_json.write_text(mine)
    shown = project.devenv("debug", "api", "--allow-root", check=True).stdout
    assert f"127.0.0.1:{debug_port} accepts any local process" in shown
    result = json.loads(project.devenv("debug", "api", "--json", "--allow-root",
                                       check=True).stdout)
    assert result["debug"] == {"language": "python", "address": f"127.0.0.1:{debug_port}",
                               "wait": False}
    api = project.service("api")
    assert api["replicas"] == {"ready": 1, "desired": 1}
    assert api["debug"]["address"] == f"127.0.0.1:{debug_port}"
    assert "debugger (python) on" in project.devenv("status").stdout
    launch = json.loads((project.root / ".vscode/launch.json").read_text())
    names = [c["name"] for c in launch["configurations"]]
    assert names == ["mine", "devenv: api"]
    mine = launch["configurations"][1]
    assert mine["connect"]["port"] == debug_port
    assert mine["pathMappings"] == [{"localRoot": str(project.root),
                                     "remoteRoot": str(project.root)}]

    # a reload keeps the debugger on: the new instance listens on the same port
    before = api["instances"][0]["id"]
    (project.root / "svc.py").write_text((project.root / "svc.py").read_text() + "\n")
    assert wait_for(lambda: project.service("api")["reloads"] == 1, 20)
    api = project.service("api")
    assert api["instances"][0]["id"] != before and api["debug"]
    client = DapClient("127.0.0.1", debug_port)  # something answers on the debug port
    try:
        assert client.request("initialize", adapterID="debugpy", clientID="test")
    finally:
        client.close()

    # a count asked for meanwhile is for after: the answer says so, --off applies it
    scaled = project.devenv("scale", "api=3", check=True)
    assert "api: under a debugger: runs 1 replica until `devenv debug api --off`, then 3" \
        in scaled.stdout
    assert project.service("api")["replicas"] == {"ready": 1, "desired": 1}
    off = project.devenv("debug", "api", "--off", check=True)
    assert "3 replicas as planned" in off.stdout
    api = project.service("api")
    assert api["replicas"] == {"ready": 3, "desired": 3} and "debug" not in api


def test_python_breakpoint_in_the_shop_checkout(project: Project) -> None:
    copy_shop(project)
    local = json.loads((project.root / ".devenv/local.yaml").read_text())
    (debug_port,) = free_ports(1)
    # health probed every 0.2 s: a breakpoint that held it would be seen at once
    local["services"]["order"].update({
        "debug": {"port": debug_port},
        "health": {"http": "/healthz", "interval": "0.2s", "timeout": "0.2s", "retries": 1}})
    (project.root / ".devenv/local.yaml").write_text(json.dumps(local))
    project.devenv("up", "--profile", "integration-test", check=True, timeout=180)
    debugged = project.devenv("debug", "order", "--allow-root", check=True)
    assert f"127.0.0.1:{debug_port}" in debugged.stdout
    instance = project.service("order")["instances"][0]["id"]

    source = project.root / "order/app.py"
    line = source.read_text().splitlines().index("    order_id = row[0]") + 1
    dap = DapClient("127.0.0.1", debug_port)
    answer: dict[str, Any] = {}
    try:
        dap.request("initialize", adapterID="debugpy", clientID="devenv-test",
                    pathFormat="path", linesStartAt1=True, columnsStartAt1=True)
        attach = dap.send("attach", justMyCode=False)
        dap.event("initialized")
        placed = dap.request("setBreakpoints", source={"path": str(source)},
                             breakpoints=[{"line": line}])
        assert placed["breakpoints"][0]["verified"], placed
        dap.request("configurationDone")
        dap.response(attach)

        def checkout() -> None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{project.ingress_port}/orders-api/orders", method="POST",
                headers={"Content-Type": "application/json", "Host": "127.0.0.1"},
                data=json.dumps({"user_id": 1, "items": [{"product_id": 1, "qty": 2}]}).encode())
            with urllib.request.urlopen(request, timeout=60) as resp:
                answer.update(status=resp.status, body=json.loads(resp.read()))

        thread = threading.Thread(target=checkout)
        thread.start()
        stopped = dap.event("stopped", timeout=20)
        assert stopped["reason"] == "breakpoint"
        frame = dap.request("stackTrace", threadId=stopped["threadId"])["stackFrames"][0]
        assert frame["line"] == line and frame["source"]["path"].endswith("order/app.py")
        scopes = dap.request("scopes", frameId=frame["id"])["scopes"]
        local_ref = next(s["variablesReference"] for s in scopes if s["name"] == "Locals")
        values = {v["name"]: v["value"]
                  for v in dap.request("variables", variablesReference=local_ref)["variables"]}
        assert int(values["total"]) > 0 and "order_id" not in values

        # paused, the service fails its health checks: it is kept, not restarted
        assert wait_for(lambda: "kept (under a debugger" in _logs(project, "order"), 15)
        order = project.service("order")
        assert order["state"] == "healthy" and order["restarts"] == 0

        dap.request("continue", threadId=stopped["threadId"])
        thread.join(30)
    finally:
        dap.close()
    assert answer["status"] == 201 and answer["body"]["status"] == "paid"
    assert answer["body"]["total_cents"] == int(values["total"])
    order = project.service("order")
    assert order["instances"][0]["id"] == instance and order["restarts"] == 0


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_node_breakpoint_through_the_inspector_with_wait(project: Project) -> None:
    shutil.copytree(FIXTURES / "debug_node", project.root / "web")
    port, debug_port = free_ports(2)
    project.services(f"""
        web:
          command: npm start
          path: web
          port: {port}
          ingress: true
          debug: {{port: {debug_port}}}
    """)
    project.up()
    waiting = project.devenv("debug", "web", "--wait", "--allow-root", check=True, timeout=30)
    assert "waits for a debugger before it runs its code" in waiting.stdout
    assert f"127.0.0.1:{debug_port}" in waiting.stdout and "chrome://inspect" in waiting.stdout
    assert project.service("web")["state"] == "starting"  # it cannot be healthy yet

    server = str(project.root / "web/server.js")
    line = next(i for i, text in enumerate(Path(server).read_text().splitlines())
                if "return { greeting }" in text)  # (0-based)

    async def debug() -> tuple[str, Any]:
        cdp = await CdpClient.connect("127.0.0.1", debug_port)
        try:
            await cdp.call("Debugger.enable")
            await cdp.call("Debugger.setBreakpointByUrl", lineNumber=line,
                           urlRegex=r"server\.js$")
            await cdp.call("Runtime.runIfWaitingForDebugger")
            first = await cdp.event("Debugger.paused")  # --inspect-brk: on its first line
            assert first["reason"] == "Break on start", first
            await cdp.call("Debugger.resume")
            await asyncio.to_thread(wait_for, lambda: project.service("web")["state"] ==
                                    "healthy", 20)
            call = asyncio.create_task(asyncio.to_thread(
                project.get, f"http://127.0.0.1:{project.ingress_port}/hello?name=cdp",
                "web.localhost", 30))
            paused = await cdp.event("Debugger.paused", timeout=20)
            frame = paused["callFrames"][0]
            assert frame["location"]["lineNumber"] == line
            value = await cdp.call("Debugger.evaluateOnCallFrame",
                                   callFrameId=frame["callFrameId"], expression="greeting")
            await cdp.call("Debugger.resume")
            return value["result"]["value"], await call
        finally:
            await cdp.close()

    greeting, (code, body) = asyncio.run(debug())
    assert greeting == "hello cdp"
    assert code == 200 and body == {"greeting": "hello cdp"}
    web = project.service("web")
    assert web["state"] == "healthy" and web["debug"]["language"] == "node"
