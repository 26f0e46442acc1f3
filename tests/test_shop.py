"""The example shop, run as a user would: profile, datasets, its own integration tests."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from conftest import Project, free_ports

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop"
SERVICES = ["db", "cache", "user", "catalog", "inventory", "payment", "order", "notification",
            "recommendation", "gateway"]


def test_shop_checkout_end_to_end(project: Project) -> None:
    shutil.copytree(SHOP, project.root, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".devenv", "__pycache__"))
    ports = free_ports(len(SERVICES))
    overrides = {"ingress": {"port": project.ingress_port},
                 "services": {n: {"port": p} for n, p in zip(SERVICES, ports, strict=True)}}
    (project.root / ".devenv").mkdir(exist_ok=True)
    (project.root / ".devenv/local.yaml").write_text(json.dumps(overrides))

    result = json.loads(project.devenv("up", "--profile", "integration-test", "--json",
                                       check=True).stdout)
    assert result["ok"] and result["datasets_loaded"] == ["demo"]
    assert {s["name"] for s in result["services"]} == set(SERVICES)

    tests = project.devenv("exec", "gateway", "--", "python", "-m", "pytest", "-q",
                           "-p", "no:cacheprovider", "tests")
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout

    code, page = project.ingress("/", "shop.localhost")
    assert code == 200 and "devenv shop" in page
    code, products = project.ingress("/api/products", "127.0.0.1")
    assert code == 200 and len(products) == 6

    # reproduce a slow payment provider: only payment is replaced, the rest keeps running
    project.devenv("config", "set", "services.payment.env.PAYMENT_DELAY_MS", "1500",
                   check=True)
    again = json.loads(project.devenv("up", "--profile", "integration-test", "--json",
                                      check=True).stdout)
    changed = {s["name"] for s in again["services"] if s["action"] != "keep"}
    assert changed == {"payment"}
    t0 = time.monotonic()
    gateway = project.service("gateway")["url"]
    import urllib.request

    request = urllib.request.Request(
        f"{gateway}/api/checkout", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"user_id": 1, "items": [{"product_id": 1, "qty": 1}]}).encode())
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert json.loads(resp.read())["status"] == "paid"
    assert time.monotonic() - t0 >= 1.5
