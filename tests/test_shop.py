"""The example shop, run as a user would: profile, datasets, its own integration tests."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from browser import CHROMIUM, open_page
from conftest import Project, free_ports

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop"
SERVICES = ["db", "cache", "user", "catalog", "inventory", "payment", "order", "notification",
            "recommendation", "gateway"]


def copy_shop(project: Project) -> None:
    """The example shop in the project folder, with every port it fixes in its devenv.yaml
    (7700, 5433, 8200...) moved by .devenv/local.yaml to one of ours."""
    shutil.copytree(SHOP, project.root, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".devenv", "__pycache__"))
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    (project.root / ".devenv").mkdir(exist_ok=True)
    (project.root / ".devenv/local.yaml").write_text(json.dumps({
        "ingress": {"port": project.ingress_port},
        "services": {name: {"port": port} for name, port in ports.items()}}))
    shown = json.loads(project.devenv("config", "show", "--profile", "integration-test",
                                      "--json", check=True).stdout)
    assert shown["ingress"]["port"] == project.ingress_port
    assert {name: s["port"] for name, s in shown["services"].items()} == ports, \
        "a service of the example shop kept a fixed port: add it to SERVICES"


def test_shop_checkout_end_to_end(project: Project) -> None:
    copy_shop(project)
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
    gateway = project.service("gateway")["url"]
    request = urllib.request.Request(
        f"{gateway}/api/checkout", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"user_id": 1, "items": [{"product_id": 1, "qty": 1}]}).encode())
    t0 = time.monotonic()  # the checkout alone: it waits for the slow payment
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert json.loads(resp.read())["status"] == "paid"
    assert time.monotonic() - t0 >= 1.5


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium; "
                    ".ci/run installs it)")
def test_shop_page_in_a_real_browser(project: Project, tmp_path: Path) -> None:
    copy_shop(project)
    project.devenv("up", "--profile", "integration-test", check=True)

    async def shop() -> tuple[int, str, str]:
        async with open_page(f"http://shop.localhost:{project.ingress_port}/") as page:
            rows = await page.wait_for("document.querySelectorAll('tr.p').length")
            await page.eval("document.querySelector('button[data-product=\"2\"]').click()")
            result = await page.wait_for(
                "document.getElementById('result').textContent.includes('paid') && "
                "document.getElementById('result').textContent")
            notes = await page.wait_for(
                "document.getElementById('notifications').textContent.includes('Order') && "
                "document.getElementById('notifications').textContent", timeout=15)
            await page.screenshot(tmp_path / "shop.png")
            return rows, result, notes

    rows, result, notes = asyncio.run(shop())
    assert rows == 6
    assert result.startswith("Order ") and "paid: 3.90 EUR" in result
    assert "is paid: 3.90 EUR" in notes  # the notification service saw the stream event
    assert (tmp_path / "shop.png").stat().st_size > 10_000
