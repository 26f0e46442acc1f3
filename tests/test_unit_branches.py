"""The pure parts of config branches and artifacts: names, diffs, the manifest, and how an
artifact becomes a service's folder."""

from __future__ import annotations

import pytest

from devenv.config import artifacts
from devenv.config.artifacts import Artifact
from devenv.core.errors import ConfigError, UsageError
from devenv.teams import refs
from devenv.teams.branches import plain
from devenv.teams.diff import MISSING, Change, artifact_changes, changes, flatten, render

TREE = "a" * 40


@pytest.mark.parametrize("name", ["feature-x", "v1.2", "a_b", "X9", "a" * 100])
def test_good_names(name: str) -> None:
    assert refs.name_problem(name) is None
    assert refs.config_ref(name) == f"refs/devenv/config/{name}"


@pytest.mark.parametrize("name", ["", "-x", ".x", "a..b", "a.", "x.lock", "a/b", "a b",
                                  "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "@{x}",
                                  "é", "a" * 101, "a\nb"])
def test_bad_names(name: str) -> None:
    assert refs.name_problem(name) is not None
    with pytest.raises(UsageError) as err:
        refs.check_name(name)
    assert err.value.exit_code == 2 and refs.NAME_RULE in err.value.message


def test_refs_and_refspecs() -> None:
    assert refs.artifact_ref("api", TREE) == f"refs/devenv/artifacts/api/{TREE}"
    assert refs.same("refs/devenv/config/x") == "refs/devenv/config/x:refs/devenv/config/x"
    assert refs.branch_of("refs/devenv/config/x") == "x"
    assert refs.branch_of("refs/heads/x") is None
    with pytest.raises(UsageError):
        refs.check_remote("--upload-pack=evil")


def test_flatten_keeps_lists_and_empty_mappings_as_leaves() -> None:
    assert flatten({"services": {"api": {"replicas": 2, "env": {"A": "1"}, "cmd": ["x"]}},
                    "x": {}}) == {"services.api.replicas": 2, "services.api.env.A": "1",
                                  "services.api.cmd": ["x"], "x": {}}


def test_changes_grouped_by_service() -> None:
    old = {"services": {"api": {"replicas": 1, "env": {"DEBUG": "1"}}, "keep": {"replicas": 2}}}
    new = {"services": {"api": {"replicas": 2}, "web": {"env": {"G": "hi"}},
                        "keep": {"replicas": 2}}, "ingress": {"port": 7800}}
    found = changes(old, new)
    assert [c.key for c in found] == ["ingress.port", "services.api.env.DEBUG",
                                      "services.api.replicas", "services.web.env.G"]
    assert render(found) == [
        "project:", "  + ingress.port: 7800",
        "api:", '  - env.DEBUG (was "1")', "  ~ replicas: 1 → 2",
        "web:", '  + env.G: "hi"',
    ]
    assert changes(new, new) == []


def test_artifact_changes() -> None:
    one = Artifact("api", TREE, "api", "v1")
    two = Artifact("api", "b" * 40, "api")
    assert artifact_changes({}, {"api": one}) == [
        Change("services.api.artifact", MISSING, f"{TREE[:12]} (from api/, version v1)")]
    assert render(artifact_changes({"api": one}, {"api": two})) == [
        "api:", f"  ~ artifact: {TREE[:12]} (from api/, version v1) → {'b' * 12} (from api/)"]
    assert artifact_changes({"api": one}, {"api": one}) == []


@pytest.mark.parametrize(("key", "asks"), [
    ("services.api.command", True), ("services.api.health.command", True),
    ("services.api.watch.build", True), ("datasets.demo.script", True),
    ("services.api.env_file", True), ("services.api.image", True),
    ("services.api.artifact", True), ("services.api.replicas", False),
    ("services.api.env.GREETING", False), ("ingress.port", False),
])
def test_changes_that_decide_what_runs_are_told_apart(key: str, asks: bool) -> None:
    from devenv.teams.diff import runs

    assert runs(Change(key, MISSING, "x")) is asks


def test_manifest_round_trip() -> None:
    found = {"api": Artifact("api", TREE, "services/api", "v1"),
             "web": Artifact("web", "c" * 64, ".")}
    text = artifacts.render(found)
    assert artifacts.parse(plain(text, "m"), "m") == found
    assert artifacts.parse(plain(artifacts.render({}), "m"), "m") == {}
    assert '  "api":\n' in text  # keys quoted as well as values


@pytest.mark.parametrize("data, says", [
    ({"services": {"api": {"digest": "xyz", "source": "api"}}}, "services.api.digest"),
    ({"services": {"api": {"digest": TREE, "source": "../up"}}}, "services.api.source"),
    ({"services": {"api": {"digest": TREE, "source": "/abs"}}}, "services.api.source"),
    ({"services": {"api": {"digest": TREE, "source": "a", "cmd": "x"}}}, "unknown key 'cmd'"),
    ({"services": {"api": "x"}}, "services.api"),
    ({"other": 1}, "expected `services:`"),
    ({"services": {"api: {x: 1}\nevil": {"digest": TREE, "source": "a"}}}, "is not a valid name"),
    ({"services": {"API": {"digest": TREE, "source": "a"}}}, "is not a valid name"),
    ({"services": {7: {"digest": TREE, "source": "a"}}}, "is not a name"),
])
def test_manifest_problems(data: object, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        artifacts.parse(data, "b:artifacts.yaml")
    assert any(says in d and d.startswith("b:artifacts.yaml") for d in err.value.details)


def test_an_artifact_becomes_the_services_folder() -> None:
    services = {"api": {"command": "python app.py", "cwd": "svc/api",
                        "env_file": ["svc/api/.env", "shared.env"], "watch": False},
                "root": {"command": "x", "env_file": ".env"},
                "web": {"command": "y", "path": "web"}}
    artifacts.apply(services, {"api": Artifact("api", TREE, "svc/api"),
                               "root": Artifact("root", TREE, "."),
                               "ghost": Artifact("ghost", TREE, "g")})
    folder = f".devenv/artifacts/{TREE}"
    assert services["api"] == {"command": "python app.py", "path": folder,
                               "env_file": [f"{folder}/.env", "shared.env"],
                               "watch": {"enabled": False}}
    assert services["root"]["env_file"] == [f"{folder}/.env"]
    assert services["web"] == {"command": "y", "path": "web"}  # not published: untouched
    assert "ghost" not in services


def test_a_packed_tree_is_the_folders_content_and_leaves_the_index_alone(tmp_path) -> None:
    import subprocess

    from devenv.teams.artifacts import tree_of
    from devenv.teams.git import Git

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "api/__pycache__").mkdir(parents=True)
    (tmp_path / "api/__pycache__/x.pyc").write_bytes(b"\0")
    (tmp_path / "api/app.py").write_text("print(1)\n")
    (tmp_path / "api/dist").mkdir()
    (tmp_path / "api/dist/out.js").write_text("built\n")
    (tmp_path / ".gitignore").write_text("dist/\n")  # ignored, yet a build's output: packed
    git = Git(tmp_path)
    tree = tree_of(git, tmp_path / "api")
    assert git.text("ls-tree", "-r", "--name-only", tree).splitlines() == [
        "app.py", "dist/out.js"]
    assert tree_of(git, tmp_path / "api") == tree  # content-addressed
    assert git.text("status", "--porcelain").splitlines() == ["?? .gitignore", "?? api/"]


def test_files_that_look_like_secrets_are_not_packed(tmp_path) -> None:
    import subprocess

    from devenv.teams.artifacts import tree_of
    from devenv.teams.git import Git

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    api = tmp_path / "api"
    (api / "certs").mkdir(parents=True)
    for name in ("app.py", ".env", ".env.local", ".env.example", "certs/server.key",
                 "certs/ca.pem", "id_ed25519", "id_ed25519.pub", "tokenizer.py"):
        (api / name).write_text("x\n")
    git = Git(tmp_path)
    left_out: list[str] = []
    tree = tree_of(git, api, left_out)
    assert git.text("ls-tree", "-r", "--name-only", tree).splitlines() == [
        ".env.example", "app.py", "id_ed25519.pub", "tokenizer.py"]
    assert left_out == [".env", ".env.local", "certs/ca.pem", "certs/server.key", "id_ed25519"]
    everything = tree_of(git, api)  # (publish --include-secrets)
    assert ".env" in git.text("ls-tree", "-r", "--name-only", everything).splitlines()


def _alias_bomb() -> str:
    """~600 bytes of nested YAML aliases that expand to 10^10 values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "services:\n  api:\n    env:\n" + "".join(f"      {line}\n" for line in lines)


def test_an_alias_bomb_is_refused_quickly_naming_the_file(tmp_path) -> None:
    from devenv.config.load import read_yaml, refuse_aliases

    with pytest.raises(ConfigError) as err:
        plain(_alias_bomb(), "x:overrides.yaml")  # (before: expanded for ever)
    assert "x:overrides.yaml" in str(err.value.problems[0])
    assert "aliases" in err.value.problems[0].message
    local = tmp_path / "local.yaml"
    local.write_text(_alias_bomb())
    with pytest.raises(ConfigError) as err:
        read_yaml(local, ".devenv/local.yaml")
    assert err.value.problems[0].file == ".devenv/local.yaml"
    with pytest.raises(ConfigError) as err:
        refuse_aliases("services:\n  api: &a {replicas: 2}\n  web: *a\n", "b:overrides.yaml")
    assert err.value.problems[0].line == 2 and "anchors and aliases" in \
        err.value.problems[0].message
    refuse_aliases("services:\n  api: {replicas: 2}\n", "b:overrides.yaml")  # plain: fine


def test_secret_values_are_masked_in_the_diff() -> None:
    old = {"services": {"api": {"env": {"API_TOKEN": "old-tok", "REF_TOKEN": "x"}}}}
    new = {"services": {"api": {"env": {"API_TOKEN": "new-tok", "REF_TOKEN": "${TOK}",
                                        "GREETING": "hi"}},
                        "db": {"password": "hunter22"}}}
    shown = "\n".join(render(changes(old, new)))
    assert "old-tok" not in shown and "new-tok" not in shown and "hunter22" not in shown
    assert "~ env.API_TOKEN: ******** → ********" in shown
    assert "~ env.REF_TOKEN: ******** → ${TOK}" in shown  # a reference is no secret
    assert '+ env.GREETING: "hi"' in shown and "+ password: ********" in shown


def test_secret_values_in_a_layer_are_found_but_references_are_not() -> None:
    from devenv.config.secrets import secret_values

    assert secret_values(flatten({"services": {
        "api": {"env": {"API_TOKEN": "abc", "DB_PASSWORD": "${DB_PASSWORD}", "X": "1"}},
        "db": {"password": "pw", "port": 5432}}})) == [
        "services.api.env.API_TOKEN", "services.db.password"]


def test_links_to_outside_are_refused_when_packing_and_unpacking(tmp_path) -> None:
    import subprocess

    from devenv.core.errors import DevenvError
    from devenv.teams.artifacts import tree_of, unpack
    from devenv.teams.git import Git

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    api = tmp_path / "api"
    (api / "lib").mkdir(parents=True)
    (api / "lib/real.py").write_text("x\n")
    (api / "lib/inside.py").symlink_to("real.py")
    git = Git(tmp_path)
    tree_of(git, api)  # a link within the folder: fine
    (api / "passwd").symlink_to("/etc/passwd")
    (api / "lib/up").symlink_to("../../secret.txt")
    with pytest.raises(UsageError) as err:
        tree_of(git, api)
    assert "lib/up -> ../../secret.txt" in err.value.message
    assert "passwd -> /etc/passwd" in err.value.message
    # a tree made by hand (another tool, an older devenv) with such a link
    blob = git.write_blob(b"/etc/passwd")
    tree = git.text("mktree", input=f"120000 blob {blob}\tpasswd\n".encode())
    with pytest.raises(DevenvError) as bad:  # (was a raw tarfile.AbsoluteLinkError)
        unpack(git, tmp_path, Artifact("api", tree, "api"))
    assert bad.value.message.startswith(f"api: artifact {tree[:12]} was not unpacked")
    assert not (tmp_path / ".devenv/artifacts" / tree).exists()


def test_apply_changes_both_files_or_neither(tmp_path) -> None:
    """A branch moved by another devenv between fetch and apply: refused, and local.yaml
    and artifacts.yaml are as they were (before, artifacts.yaml was already rewritten)."""
    import subprocess

    from devenv.config.model import CURRENT_VERSION
    from devenv.core.paths import StateDir
    from devenv.teams import sync
    from devenv.teams.branches import Branches
    from devenv.teams.git import GitError

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "devenv.yaml").write_text(
        f"version: {CURRENT_VERSION}\nservices:\n  api:\n    command: python x.py\n")
    branches = Branches(tmp_path)
    art = Artifact("api", branches.git.text("mktree", input=b""), ".")
    theirs = branches.save("x", "services:\n  api:\n    replicas: 2\n",
                           artifacts.render({"api": art}), "theirs")
    branches.git.update_ref(refs.config_ref("x"), branches.save("y", "", "", "mine"))
    StateDir(tmp_path).ensure()
    (tmp_path / ".devenv/local.yaml").write_text("")
    (tmp_path / ".devenv/artifacts.yaml").write_text(artifacts.HEADER)
    incoming = sync.prepare(branches, "x", ".", force=True, profile=None)
    # (prepare fetched refs/devenv/config/x of "." itself: point it at theirs to take)
    incoming.content = branches.read(theirs)
    incoming.artifacts = {"api": art}
    branches.git.update_ref(refs.config_ref("x"), theirs)  # moved meanwhile
    with pytest.raises(GitError):
        sync.apply(branches, incoming)
    assert (tmp_path / ".devenv/local.yaml").read_text() == ""
    assert (tmp_path / ".devenv/artifacts.yaml").read_text() == artifacts.HEADER


def test_git_never_waits_for_an_answer(tmp_path, monkeypatch) -> None:
    import os
    import subprocess
    import sys

    from devenv.teams.git import Git, GitError

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    # ssh runs in batch mode (no passphrase or host-key question); a fake ssh shows how
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/ssh-args\nexit 1\n")
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    monkeypatch.delenv("GIT_SSH", raising=False)
    with pytest.raises(GitError):
        Git(tmp_path).fetch("ssh://git@example.invalid/r.git", ["x"])
    assert "BatchMode=yes" in (tmp_path / "ssh-args").read_text()
    # and git's stdin is not the caller's: what is typed there never reaches it
    code = ("from pathlib import Path; from devenv.teams.git import Git; "
            "print(Git(Path('.')).text('hash-object', '--stdin'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, input="typed\n",
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # (empty)
