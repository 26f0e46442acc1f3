"""`devenv docs generate` through the real CLI: the example shop's page, a project with odd
service names and secrets, `--check` for CI, and the Mermaid graph read by Mermaid's own
parser (the `mermaid` npm package, in a real headless Chromium: its parser wants a DOM)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser import CHROMIUM, open_page
from conftest import ENV, Project

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop"
MERMAID_VERSION = "11"  # the major version the graph is checked against
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "devenv-tests"
MERMAID_JS = CACHE / f"mermaid-{MERMAID_VERSION}" / "node_modules/mermaid/dist/mermaid.min.js"

SECRETS = ("tok-s3cr3t-9f8e", "envfile-s3cr3t-77", "pg-s3cr3t-pass", "alice-s3cr3t-pw",
           "profile-s3cr3t-1")
ODD = """\
version: 1
name: odd
services:
  end:
    description: "Named like Mermaid's keyword; a <b>tag</b> and a | pipe in its words"
    command: python svc.py --token tok-s3cr3t-9f8e
    port: 21001
    env: {API_TOKEN: tok-s3cr3t-9f8e, MODE: fast}
    env_file: [odd.env]
    depends_on: {o--x: {restart: true}, graph: completed}
    ingress: {host: "end.test", path: /end}
  o--x:
    kind: postgres
    port: 21002
    password: pg-s3cr3t-pass
    users: {alice: alice-s3cr3t-pw}
    databases: [main, click]
  graph:
    command: ["python", "-c", "print('`x` | y')"]
    restart: "no"
  x-ray:
    command: python svc.py
    port: 21003
    depends_on: [end, click]
  click:
    command: python svc.py
    port: 21004
    health: {command: "curl -H 'Authorization: tok-s3cr3t-9f8e' localhost"}
profiles:
  fast:
    services: [x-ray]
    env: {SESSION_SECRET: profile-s3cr3t-1}
    overrides: {end: {replicas: 2}}
datasets:
  seed:
    files: {o--x/click: [seed.sql]}
"""


def devenv(cwd: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devenv", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, env={**ENV, **(env or {})})


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    shutil.copytree(SHOP, root, ignore=shutil.ignore_patterns(".devenv", "__pycache__"))
    return root


@pytest.fixture
def odd(project: Project) -> Path:
    (project.root / "devenv.yaml").write_text(ODD)
    (project.root / "odd.env").write_text("DB_PASSWORD=envfile-s3cr3t-77\nLOG_LEVEL=debug\n")
    (project.root / "seed.sql").write_text("select 1;\n")
    return project.root


def mermaid_block(text: str) -> str:
    found = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert found, "no mermaid block in the page"
    return found.group(1)


def test_shop_page_says_what_runs_and_is_deterministic(shop: Path) -> None:
    result = devenv(shop, "docs", "generate")
    assert result.returncode == 0, result.stderr
    page = (shop / "docs/environment.md").read_text()
    assert "wrote docs/environment.md" in result.stdout or "environment.md" in result.stdout
    for name in ("gateway", "order", "catalog", "payment"):
        assert f"### {name}\n" in page
    assert "| URL | http://127.0.0.1:8200 |" in page  # the gateway
    assert "http://shop.localhost:7700/" in page  # its declared host, through the ingress
    assert "path `/orders-api` on any host, prefix stripped" in page
    assert "`db` (healthy, database `orders`, rolled when it restarts)" in page
    assert "HTTP GET `/healthz`" in page
    assert "`replace` on `order`, `lib`" in page  # watch
    assert "`production-like` (`order`: `replicas`)" in page  # what a profile changes
    assert "`PAYMENT_DELAY_MS`" in page and "`PYTHONPATH`" in page  # env names, from env_file too
    assert "`postgresql://shop:***@127.0.0.1:5433/users`" in page  # a data service's URL
    assert "`users`, `catalog`, `inventory`, `orders`, `payments`" in page  # its databases
    assert "`demo` (catalog, inventory, users)" in page  # the datasets loaded into db
    assert "shop-dev-password" not in page and "shop-dev-redis" not in page
    # the configuration reference has the model's keys, a data kind's among them
    for key in ("services.<name>.health.start_period", "services.<name>.extensions",
                "monitoring.scrape_interval", "profiles.<name>.datasets"):
        assert f"| `{key}` |" in page
    # the same configuration gives the same bytes: nothing of the moment in it
    assert devenv(shop, "docs", "generate").returncode == 0
    assert (shop / "docs/environment.md").read_text() == page
    assert not re.search(r"20\d\d-\d\d-\d\d", page)


def test_check_tells_a_stale_page_and_how_to_refresh_it(shop: Path) -> None:
    missing = devenv(shop, "docs", "generate", "--check")
    assert missing.returncode == 1
    assert "docs/environment.md does not exist" in missing.stderr
    assert devenv(shop, "docs", "generate", "-o", "team/env.md").returncode == 0
    fresh = devenv(shop, "docs", "generate", "-o", "team/env.md", "--check")
    assert fresh.returncode == 0, fresh.stderr
    assert "up to date" in fresh.stderr
    config = shop / "devenv.yaml"
    config.write_text(config.read_text().replace("port: 8205", "port: 8215"))
    before = (shop / "team/env.md").read_text()
    stale = devenv(shop, "docs", "generate", "-o", "team/env.md", "--check")
    assert stale.returncode == 1
    assert "team/env.md is stale" in stale.stderr
    assert "devenv docs generate -o team/env.md" in stale.stderr  # how to refresh it
    assert (shop / "team/env.md").read_text() == before  # --check writes nothing
    assert devenv(shop, "docs", "generate", "-o", "-", "--check").returncode == 2


def test_odd_names_and_secrets(odd: Path) -> None:
    result = devenv(odd, "docs", "generate", "-o", "-")
    assert result.returncode == 0, result.stderr
    page = result.stdout
    for secret in SECRETS:
        assert secret not in page, f"secret {secret} written"
    for name in ("API_TOKEN", "DB_PASSWORD", "LOG_LEVEL", "MODE", "SESSION_SECRET"):
        assert f"`{name}`" in page  # the names are the documentation; values never
    assert "python svc.py --token ********" in page
    assert "&lt;b&gt;tag&lt;/b&gt; and a | pipe" in page  # words, not HTML
    assert "``python -c 'print('\"'\"'`x` \\| y'\"'\"')'``" in page  # backticks in a command
    graph = mermaid_block(page)
    assert 'svc_end["end"]' in graph and 'svc_o__x[("o--x (postgres)")]' in graph
    assert 'svc_graph[["graph (job)"]]' in graph
    assert 'svc_end -->|"completed"| svc_graph' in graph
    assert 'devenv_ingress -.->|"end.test /end"| svc_end' in graph


# ---- Mermaid's own parser


@pytest.fixture(scope="module")
def mermaid_js() -> Iterator[Path]:
    """The `mermaid` npm package, installed once into a cache folder (npm reaches the
    registry); the graph is read by it in a headless Chromium."""
    if CHROMIUM is None:
        pytest.skip("needs chromium (apt-get install chromium; `make tools` installs it)")
    if not MERMAID_JS.is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("needs npm to install the mermaid package (apt-get install npm)")
        folder = MERMAID_JS.parents[3]
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "install", "--prefix", str(folder), "--no-audit",
                               "--no-fund", f"mermaid@{MERMAID_VERSION}"],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or not MERMAID_JS.is_file():
            pytest.skip(f"npm could not install mermaid: {done.stderr.strip()[-300:]}")
    yield MERMAID_JS


def mermaid_read(js: Path, graphs: list[str]) -> list[dict[str, object]]:
    """Each graph parsed, then rendered, by Mermaid: its error, or the node labels drawn."""
    page_file = js.parent / "devenv-parse.html"
    page_file.write_text(f'<!doctype html><body><script src="{js.as_uri()}"></script></body>')
    script = """(async (text, n) => {
        try { await mermaid.parse(text); } catch (e) { return {error: String(e.message)}; }
        const {svg} = await mermaid.render('g' + n, text);
        const doc = new DOMParser().parseFromString(svg, 'image/svg+xml');
        return {nodes: [...doc.querySelectorAll('g.node')].map(g => g.textContent.trim())};
    })"""

    async def read() -> list[dict[str, object]]:
        async with open_page(page_file.as_uri()) as page:
            assert await page.wait_for("typeof mermaid !== 'undefined'", timeout=30)
            await page.eval("mermaid.initialize({startOnLoad: false}), true")
            return [await page.eval(f"{script}({json.dumps(g)}, {i})")
                    for i, g in enumerate(graphs)]

    return asyncio.run(read())


def test_mermaid_reads_the_graphs(mermaid_js: Path, shop: Path, odd: Path) -> None:
    shop_graph = mermaid_block(devenv(shop, "docs", "generate", "-o", "-").stdout)
    odd_graph = mermaid_block(devenv(odd, "docs", "generate", "-o", "-").stdout)
    broken = "flowchart LR\n    a -->|x| end\n"  # unquoted, `end` is a keyword
    shop_read, odd_read, broken_read = mermaid_read(mermaid_js, [shop_graph, odd_graph, broken])
    assert "error" in broken_read  # the parser does refuse what it cannot read
    assert "error" not in shop_read, shop_read
    assert sorted(shop_read["nodes"]) == sorted(  # type: ignore[call-overload]
        ["cache (redis)", "catalog", "db (postgres)", "gateway", "inventory", "notification",
         "order", "payment", "recommendation", "user", "ingress :7700"])
    assert "error" not in odd_read, odd_read
    assert sorted(odd_read["nodes"]) == sorted(  # type: ignore[call-overload]
        ["end", "o--x (postgres)", "graph (job)", "x-ray", "click", "ingress :7700"])


def test_the_page_is_devenv_yaml_alone_the_same_on_every_machine(odd: Path) -> None:
    config = odd / "devenv.yaml"
    config.write_text(config.read_text().replace(
        "command: python svc.py\n    port: 21003",
        'command: python svc.py --token ${GITHUB_TOKEN} --home ${HOME} --need ${NEED:?}\n'
        "    port: 21003"))
    mine = {"GITHUB_TOKEN": "ghp_machine1s3cr3t", "HOME": "/home/alice"}
    assert devenv(odd, "docs", "generate", env=mine).returncode == 0
    page = (odd / "docs/environment.md").read_text()
    assert "ghp_machine1s3cr3t" not in page and "/home/alice" not in page
    assert "python svc.py --token ${GITHUB_TOKEN} --home ${HOME} --need ${NEED:?}" in page
    (odd / ".devenv").mkdir(exist_ok=True)
    (odd / ".devenv/local.yaml").write_text("services:\n  x-ray:\n    replicas: 5\n")
    other = {"GITHUB_TOKEN": "ghp_other", "HOME": "/home/bob", "NEED": "x"}
    checked = devenv(odd, "docs", "generate", "--check", env=other)
    assert checked.returncode == 0, checked.stderr  # another machine, personal overrides
