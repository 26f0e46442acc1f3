"""Config branches between two clones of a bare remote: real git, real engines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from git_clones import git, make_clones, stopped_after

from conftest import Project, free_ports


@pytest.fixture
def clones(tmp_path: Path) -> Iterator[tuple[Project, Project]]:
    api, web, keep = free_ports(3)
    a, b, _ = make_clones(tmp_path, f"""\
api:
  command: python svc.py
  path: api
  port: {api}
  health: {{http: /healthz, interval: 0.2s}}
web:
  command: python svc.py
  path: web
  port: {web}
  health: {{http: /healthz, interval: 0.2s}}
keep:
  command: python svc.py
  path: keep
  port: {keep}
  health: {{http: /healthz, interval: 0.2s}}
""")
    with stopped_after(a, b):
        yield a, b


def instances(proj: Project, name: str) -> list[str]:
    return [i["id"] for i in proj.service(name)["instances"]]


def test_a_pushed_branch_synced_replaces_only_what_it_changes(
        clones: tuple[Project, Project]) -> None:
    a, b = clones
    a.devenv("config", "set", "services.api.replicas", "2", check=True)
    a.devenv("config", "set", "services.web.env.GREETING", "hi", check=True)
    made = a.devenv("config", "branch", "feature-x", "--push", check=True)
    assert "created config branch feature-x" in made.stdout
    assert "pushed feature-x to origin" in made.stdout

    b.up()
    keep_before, api_before = instances(b, "keep"), instances(b, "api")
    head = git(b.root, "rev-parse", "HEAD")
    synced = b.devenv("sync", "--branch", "feature-x", check=True)
    assert "api:\n    + replicas: 2" in synced.stdout
    assert 'web:\n    + env.GREETING: "hi"' in synced.stdout
    assert "keep" not in synced.stdout.split("changes:")[1].split("now on")[0]

    api = b.service("api")
    assert api["replicas"]["desired"] == 2 and api["replicas"]["ready"] == 2
    assert api_before[0] in instances(b, "api")  # scaled, not replaced
    assert instances(b, "keep") == keep_before  # unchanged: the same instance
    web_port = b.service("web")["url"].rsplit(":", 1)[1]
    assert b.get(f"http://127.0.0.1:{web_port}/whoami")[1]["greeting"] == "hi"
    listed = b.devenv("config", "branch", check=True).stdout
    assert listed.splitlines() == ["* feature-x"]
    # code untouched: the same commit checked out, nothing in the working tree or index
    assert git(b.root, "rev-parse", "HEAD") == head
    assert git(b.root, "status", "--porcelain") == ""
    assert git(b.root, "for-each-ref", "refs/devenv/incoming") == ""


def _push_branch(a: Project, name: str, overrides: str) -> None:
    """A branch made by hand (as a broken or hostile devenv could), pushed."""
    blob = git(a.root, "hash-object", "-w", "--stdin", input=overrides)
    tree = git(a.root, "mktree", input=f"100644 blob {blob}\toverrides.yaml\n")
    commit = git(a.root, "commit-tree", tree, "-m", name)
    git(a.root, "push", "-q", "origin", f"{commit}:refs/devenv/config/{name}")


def test_an_invalid_branch_is_refused_and_nothing_changes(
        clones: tuple[Project, Project]) -> None:
    a, b = clones
    _push_branch(a, "typo", "services:\n  api:\n    replicas: 2\n  web:\n    replicaz: 3\n"
                 "  ghost:\n    port: 1\n")
    _push_branch(a, "broken", "services: [\n")
    _push_branch(a, "aliased", "services:\n  api: &x {replicas: 2}\n  web: *x\n")
    b.devenv("config", "set", "services.keep.replicas", "2", check=True)
    b.devenv("config", "branch", "mine", check=True)
    local = (b.root / ".devenv/local.yaml").read_text()

    typo = b.devenv("sync", "--branch", "typo")
    assert typo.returncode == 2, typo.stderr
    assert "typo:overrides.yaml:5 services.web.replicaz" in typo.stderr
    assert "typo:overrides.yaml:6" in typo.stderr and "ghost" in typo.stderr  # every problem
    broken = b.devenv("sync", "--branch", "broken")
    assert broken.returncode == 2
    assert "broken:overrides.yaml:2" in broken.stderr and "YAML syntax" in broken.stderr
    aliased = b.devenv("sync", "--branch", "aliased")  # (an alias bomb hung sync before)
    assert aliased.returncode == 2
    assert "aliased:overrides.yaml:2" in aliased.stderr and "aliases" in aliased.stderr
    _push_branch(a, "runs", "services:\n  api:\n    command: python svc.py --evil\n")
    runs = b.devenv("sync", "--branch", "runs")  # not a TTY: refused, saying what would run
    assert runs.returncode == 1
    assert '+ command: "python svc.py --evil"' in runs.stderr and "--yes" in runs.stderr

    assert (b.root / ".devenv/local.yaml").read_text() == local
    assert b.devenv("config", "branch", check=True).stdout.splitlines() == ["* mine"]
    assert git(b.root, "for-each-ref", "refs/devenv/config/typo", "refs/devenv/incoming") == ""


def test_unsaved_local_overrides_block_sync_unless_forced(
        clones: tuple[Project, Project]) -> None:
    a, b = clones
    a.devenv("config", "set", "services.api.replicas", "2", check=True)
    a.devenv("config", "branch", "feature-x", "--push", check=True)
    b.devenv("config", "set", "services.web.replicas", "3", check=True)

    refused = b.devenv("sync", "--branch", "feature-x")
    assert refused.returncode == 1
    assert "not saved to a config branch: services.web.replicas" in refused.stderr
    assert "--force" in refused.stderr
    assert "replicas: 3" in (b.root / ".devenv/local.yaml").read_text()

    forced = b.devenv("sync", "--branch", "feature-x", "--force", check=True)
    assert "- replicas (was 3)" in forced.stdout
    text = (b.root / ".devenv/local.yaml").read_text()
    assert "replicas: 2" in text and "web" not in text
    assert "kept in .devenv/local.yaml.bak" in forced.stderr  # what --force replaced
    assert "replicas: 3" in (b.root / ".devenv/local.yaml.bak").read_text()


def test_secret_values_are_never_saved_to_a_branch(clones: tuple[Project, Project]) -> None:
    a, _ = clones
    a.devenv("config", "set", "services.api.env.API_TOKEN", "tok-12345", check=True)
    refused = a.devenv("config", "branch", "feature-x", "--push")
    assert refused.returncode == 2
    assert "services.api.env.API_TOKEN" in refused.stderr and "tok-12345" not in refused.stderr
    assert "${API_TOKEN}" in refused.stderr  # what to do instead
    assert git(a.root, "for-each-ref", "refs/devenv/config") == ""
    a.devenv("config", "set", "services.api.env.API_TOKEN", "${API_TOKEN}", check=True)
    a.devenv("config", "branch", "feature-x", "--push", check=True)  # a reference: fine


def test_a_branch_saved_again_and_pushed_reaches_a_synced_clone(
        clones: tuple[Project, Project]) -> None:
    a, b = clones
    a.devenv("config", "set", "services.api.replicas", "2", check=True)
    a.devenv("config", "branch", "feature-x", "--push", check=True)
    b.devenv("sync", "--branch", "feature-x", check=True)
    a.devenv("config", "set", "services.api.replicas", "3", check=True)
    again = a.devenv("config", "branch", "feature-x", "--push", check=True)
    assert "saved to config branch feature-x" in again.stdout

    synced = b.devenv("sync", "--branch", "feature-x", check=True)  # no unsaved changes in B
    assert "~ replicas: 2 → 3" in synced.stdout

    b.devenv("config", "set", "services.api.replicas", "4", check=True)
    b.devenv("config", "branch", "feature-x", "--push", check=True)
    a.devenv("config", "set", "services.api.replicas", "5", check=True)
    late = a.devenv("config", "branch", "feature-x", "--push")  # B pushed first
    assert late.returncode == 1
    assert "origin has changes to 'feature-x' that you do not have" in late.stderr
    diverged = a.devenv("sync", "--branch", "feature-x")
    assert diverged.returncode == 1 and "saved changes the remote's does not" in diverged.stderr
    mine = git(a.root, "rev-parse", "refs/devenv/config/feature-x")
    taken = a.devenv("sync", "--branch", "feature-x", "--force", check=True)
    assert "~ replicas: 5 → 4" in taken.stdout
    backup = taken.stderr.split("previous commit is kept as ")[1].split()[0]
    assert backup.startswith("refs/devenv/backup/feature-x/")
    assert git(a.root, "rev-parse", backup) == mine  # the replaced commit is not lost
    other = a.devenv("config", "branch", "other")
    assert other.returncode == 0
    exists = a.devenv("config", "branch", "feature-x")  # exists, not current: refused
    assert exists.returncode == 2 and "devenv sync --branch feature-x" in exists.stderr


@pytest.mark.parametrize("argv", [
    ("config", "branch", "feature x"),
    ("config", "branch", "../escape"),
    ("config", "branch", "a..b"),
    ("config", "branch", "x.lock"),
    ("sync", "--branch", "a;rm -rf ~"),
    ("publish", "--service", "api/../x"),
])
def test_bad_names_are_refused_with_the_rule(tmp_path: Path, argv: tuple[str, ...]) -> None:
    proj = Project(tmp_path, free_ports(1)[0])
    proj.services("api: {command: python svc.py}\n")
    git(tmp_path, "init", "-q")
    done = proj.devenv(*argv)
    assert done.returncode == 2, done.stderr
    assert "is not a valid name: use letters, digits" in done.stderr
    assert git(tmp_path, "for-each-ref") == ""
