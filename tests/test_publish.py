"""Published services: packed in clone A (after its build step), run in clone B from the
artifact alone, its source folder deleted. Real git, a real engine."""

from __future__ import annotations

import shutil
from pathlib import Path

from git_clones import git, make_clones, stopped_after

from conftest import free_ports


def test_a_published_service_runs_from_its_artifact_without_its_source(tmp_path: Path) -> None:
    (api,) = free_ports(1)
    a, b, remote = make_clones(tmp_path, f"""\
api:
  command: python svc.py
  path: api
  port: {api}
  env: {{GREETING: "${{GREETING:-from-source}}"}}
  health: {{http: /healthz, interval: 0.2s}}
  watch: {{build: "echo built > built.txt"}}
""")
    with stopped_after(a, b):
        a.devenv("config", "branch", "feature-x", check=True)
        (a.root / "api/.env").write_text("API_TOKEN=s3cr3t\n")  # (ignored files are packed)
        published = a.devenv("publish", "--service", "api", "--version", "v1", "--push",
                             check=True)
        assert "published api v1: artifact" in published.stdout
        assert "left out of the artifact, as they look like secrets: .env" in published.stderr
        assert (a.root / "api/built.txt").read_text() == "built\n"  # the build step ran
        digest = git(a.root, "rev-parse", "refs/devenv/config/feature-x:artifacts.yaml")
        manifest = git(a.root, "cat-file", "blob", digest)
        tree = manifest.split('digest: "')[1].split('"')[0]
        assert git(remote, "rev-parse", f"refs/devenv/artifacts/api/{tree}^{{tree}}") == tree
        again = a.devenv("publish", "--service", "api", "--push", check=True)  # same content
        assert tree[:12] in again.stdout

        shutil.rmtree(b.root / "api")
        asked = b.devenv("sync", "--branch", "feature-x")  # runs new code: not without --yes
        assert asked.returncode == 1, asked.stderr
        assert f"+ artifact: {tree[:12]} (from api/)" in asked.stderr
        assert "--yes" in asked.stderr
        assert not (b.root / ".devenv/artifacts.yaml").exists()
        synced = b.devenv("sync", "--branch", "feature-x", "--yes", check=True)
        assert f"+ artifact: {tree[:12]}" in synced.stdout
        b.up()
        status, cwd = b.get(f"http://127.0.0.1:{api}/cwd")
        assert status == 200
        assert cwd["cwd"] == str(b.root / ".devenv/artifacts" / tree)
        assert (b.root / ".devenv/artifacts" / tree / "built.txt").read_text() == "built\n"
        assert not (b.root / ".devenv/artifacts" / tree / ".env").exists()
        assert b.get(f"http://127.0.0.1:{api}/whoami")[1]["greeting"] == "from-source"
        assert not (b.root / "api").exists()


def test_publish_needs_a_current_branch_and_a_known_service(tmp_path: Path) -> None:
    (api,) = free_ports(1)
    a, b, _ = make_clones(tmp_path, f"api:\n  command: python svc.py\n  path: api\n"
                          f"  port: {api}\n")
    with stopped_after(a, b):
        none = a.devenv("publish", "--service", "api")
        assert none.returncode == 2 and "devenv config branch NAME" in none.stderr
        a.devenv("config", "branch", "feature-x", check=True)
        unknown = a.devenv("publish", "--service", "apx")
        assert unknown.returncode == 2 and "no service 'apx'" in unknown.stderr
        failing = a.devenv("config", "set", "services.api.watch.build", "exit 3")
        assert failing.returncode == 0
        broken = a.devenv("publish", "--service", "api")
        assert broken.returncode == 1 and "build step failed (exit 3)" in broken.stderr
        assert git(a.root, "for-each-ref", "refs/devenv/artifacts") == ""
