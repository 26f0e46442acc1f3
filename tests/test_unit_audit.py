"""The audit chain (`devenv.audit`: append, verify) and the CLI hook's redaction, on files
in a temporary folder: an edited, removed, reordered, repeated or cut line is named."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest

from devenv import audit
from devenv.cli import audit as hook
from devenv.cli.main import parser


def written(tmp_path: Path, n: int = 6) -> tuple[Path, list[str]]:
    log = tmp_path / "audit.log"
    for i in range(n):
        audit.append(log, {"command": "up", "args": ["up", str(i)], "exit": 0})
    return log, audit.read_lines(log)


def found(lines: list[str], log: Path) -> list[str]:
    return [str(p) for p in audit.verify(lines, audit.read_head(log))]


def test_records_chain_from_genesis_and_are_owner_only(tmp_path: Path) -> None:
    log, lines = written(tmp_path, 3)
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == audit.GENESIS
    assert records[1]["prev"] == audit.line_hash(lines[0])
    assert records[2]["prev"] == audit.line_hash(lines[1])
    assert found(lines, log) == []
    for path in (log, audit.head_path(log)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_arguments_with_line_separators_keep_the_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    for arg in ("a\u2028b", "c\u2029d\x85e\x1cf\rg", "plain"):
        audit.append(log, {"command": "config set", "args": ["config", "set", "k", arg]})
    lines = audit.read_lines(log)
    assert len(lines) == 3 and json.loads(lines[0])["args"][-1] == "a\u2028b"
    assert found(lines, log) == []


def test_an_edited_line_is_named(tmp_path: Path) -> None:
    log, lines = written(tmp_path)
    lines[2] = lines[2].replace('"exit":0', '"exit":1')
    assert found(lines, log) == ["line 3 was edited: record 4 (line 4) chains from other "
                                 "content"]


def test_an_edited_last_line_is_named_from_the_head(tmp_path: Path) -> None:
    log, lines = written(tmp_path)
    lines[5] = lines[5].replace('"up"', '"stop"', 1)
    assert found(lines, log) == ["line 6 was edited: record 6, the last written, no longer "
                                 "matches its hash in audit.head"]


def test_removed_lines_are_named(tmp_path: Path) -> None:
    log, lines = written(tmp_path)
    assert found(lines[:2] + lines[4:], log) == [
        "line 3 is record 5: records 3-4 before it were removed"]
    assert found(lines[1:], log) == ["line 1 is record 2: record 1 before it was removed"]
    assert found(lines[:5], log) == ["line 6 should hold record 6: it was removed from the end"]
    assert found([], log) == ["line 1 should hold records 1-6: they were removed from the end"]


def test_reordered_lines_are_named(tmp_path: Path) -> None:
    log, lines = written(tmp_path)
    swapped = lines[:2] + [lines[3], lines[2]] + lines[4:]
    assert found(swapped, log) == ["line 3 is record 4, out of order: it belongs after "
                                   "record 3 (line 4)"]
    moved = [lines[5]] + lines[:5]  # the last line moved to the top: one move, one problem
    assert found(moved, log) == ["line 1 is record 6, out of order: it belongs after record 5 "
                                 "(line 6)"]


def test_repeated_unreadable_lines_and_a_missing_head(tmp_path: Path) -> None:
    log, lines = written(tmp_path)
    assert found([*lines, lines[1]], log) == ["line 7 repeats record 2 (first at line 2)"]
    broken = [*lines]
    broken[1] = broken[1][:20]
    assert found(broken, log) == ["line 2 is not an audit record (edited, or cut short)"]
    audit.head_path(log).unlink()
    assert found(lines, log) == ["audit.head is missing or unreadable: records cut from the "
                                 "end cannot be found"]


def test_an_append_after_a_line_cut_short_starts_a_new_line(tmp_path: Path) -> None:
    log, lines = written(tmp_path, 2)
    log.write_text(lines[0] + "\n" + lines[1][:15])  # a crash in the middle of a write
    audit.append(log, {"command": "stop", "args": ["stop"], "exit": 0})
    after = audit.read_lines(log)
    assert len(after) == 3 and json.loads(after[2])["command"] == "stop"
    assert found(after, log) == ["line 2 is not an audit record (edited, or cut short)"]


def args_of(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


@pytest.mark.parametrize(("argv", "name", "audited"), [
    (["up"], "up", True), (["scale", "api=2"], "scale", True), (["stop"], "stop", True),
    (["debug", "api"], "debug", True), (["config", "set", "a.b", "1"], "config set", True),
    (["data", "reset"], "data reset", True), (["snapshot", "import", "f"], "snapshot import",
                                               True),
    (["status"], "status", False), (["logs"], "logs", False),
    (["config", "get", "a"], "config get", False), (["snapshot", "list"], "snapshot list",
                                                   False),
    (["audit"], "audit", False), (["docs", "generate"], "docs generate", False),
])
def test_which_commands_are_audited(argv: list[str], name: str, audited: bool) -> None:
    args = args_of(*argv)
    assert hook.command_name(args) == name
    assert (name in hook.AUDITED or args.command in hook.AUDITED) is audited


def test_commands_still_to_come_are_listed() -> None:
    assert {"sync", "publish", "migrate", "config branch"} <= hook.AUDITED


def test_sync_publish_and_saving_a_branch_are_recorded(tmp_path: Path) -> None:
    (tmp_path / "devenv.yaml").write_text("version: 1\n")
    at = ["-C", str(tmp_path)]
    for argv in (["sync", "--branch", "b"], ["publish", "--service", "api"],
                 ["config", "branch", "feature-x"]):
        assert hook.start(args_of(*at, *argv), argv) is not None, argv
    assert hook.start(args_of(*at, "config", "branch"), ["config", "branch"]) is None  # a list
    assert hook.start(args_of(*at, "status"), ["status"]) is None


def test_secret_keys_come_from_the_model() -> None:
    # declared `secret=True` by the data kinds (postgres' password and users, redis' password)
    assert {"password", "users"} <= hook.secret_keys()
    assert "port" not in hook.secret_keys()


def test_redaction() -> None:
    known = ["k8s-known-value", "ab"]
    assert hook.redact(["config", "set", "services.db.password", "hunter22"], known) == [
        "config", "set", "services.db.password", "********"]
    assert hook.redact(["config", "set", "services.db.users", "{alice: pw1}"], known)[-1] == \
        "********"
    assert hook.redact(["config", "set", "services.api.env.API_TOKEN", "x1"], known)[-1] == \
        "********"
    assert hook.redact(["config", "set", "services.api.port", "8080"], known)[-1] == "8080"
    assert hook.redact(["publish", "--set", "services.db.password=pw2"], known) == [
        "publish", "--set", "services.db.password=********"]
    assert hook.redact(["sync", "--token", "t0k", "--api-key=zz"], known) == [
        "sync", "--token", "********", "--api-key=********"]
    assert hook.redact(["scale", "api=k8s-known-value"], known) == ["scale", "api=********"]
    assert hook.redact(["scale", "ab"], known) == ["scale", "********"]  # short: whole only
    assert hook.redact(["scale", "abc=2"], known) == ["scale", "abc=2"]


def test_redaction_of_env_values_urls_and_nested_options() -> None:
    assert hook.redact(["config", "set", "services.api.env.DATABASE_URL", "pg://x"], []) \
        == ["config", "set", "services.api.env.DATABASE_URL", "********"]
    assert hook.redact(["config", "set", "services.api.env.MODE=fast"], [])[-1] == \
        "services.api.env.MODE=********"
    assert hook.redact(["sync", "--remote", "https://bob:ghp_T0KEN@git.example/r.git"], []) \
        == ["sync", "--remote", "https://********@git.example/r.git"]
    assert hook.redact(["sync", "--remote=https://ghp_T0KEN@git.example/r"], [])[-1] == \
        "--remote=https://********@git.example/r"
    assert hook.redact(["up", "--opt=API_KEY=zz9", "--set=MODE=fast"], []) == [
        "up", "--opt=API_KEY=********", "--set=MODE=fast"]
    assert hook.redact(["config", "set", "services.api.replicas", "2"], [])[-1] == "2"


def test_git_errors_do_not_show_a_urls_credentials(tmp_path: Path) -> None:
    from devenv.teams.git import Git, GitError

    with pytest.raises(GitError) as err:
        Git(tmp_path).fetch("https://bob:ghp_T0KEN@127.0.0.1:9/r.git", ["x"])
    shown = err.value.message + "\n".join(err.value.details)
    assert "ghp_T0KEN" not in shown and "https://********@127.0.0.1:9/r.git" in shown


def test_known_secrets_of_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "devenv.yaml").write_text(
        "version: 1\nservices:\n  db: {kind: postgres, port: 23001, password: pg-pass-1,"
        " users: {bob: bob-pass-2}}\n  api:\n    command: python x.py\n    env_file: [a.env]\n"
        "    env: {API_TOKEN: tok-3, MODE: fast}\nprofiles:\n  p: {env: {SECRET_X: sx-4}}\n")
    (tmp_path / "a.env").write_text("DB_PASSWORD=envf-5\n")
    monkeypatch.setenv("CI_DEPLOY_TOKEN", "ci-6")
    values = hook.known_secrets(tmp_path)
    for value in ("pg-pass-1", "bob-pass-2", "tok-3", "sx-4", "envf-5", "ci-6"):
        assert value in values
    assert "fast" not in values


def test_an_audit_write_failure_is_a_warning(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "devenv.yaml").write_text("version: 1\n")
    (tmp_path / ".devenv").mkdir(mode=0o700)
    (tmp_path / ".devenv" / "audit.log").mkdir()  # cannot be opened as a file
    recording = hook.Recording(tmp_path, "stop", ["stop"], started=0.0)
    recording.finish(0, None)  # does not raise
    assert "could not write the audit log" in capsys.readouterr().err
    assert os.path.isdir(tmp_path / ".devenv" / "audit.log")


def test_a_command_that_raised_is_recorded(tmp_path: Path) -> None:
    (tmp_path / "devenv.yaml").write_text("version: 1\n")
    for exc, code, error in ((RuntimeError("boom"), 1, "RuntimeError: boom"),
                             (SystemExit(0), 0, None), (SystemExit(3), 3, "3")):
        hook.Recording(tmp_path, "up", ["up"], started=0.0).raised(exc)
        last = audit.read(tmp_path / ".devenv" / "audit.log")[-1]
        assert (last["exit"], last["error"]) == (code, error)
