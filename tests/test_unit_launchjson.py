"""Merging devenv's attach configurations into .vscode/launch.json (JSONC)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devenv.cli.commands.debug import write_launch_json
from devenv.core.errors import DevenvError
from devenv.launchjson import entry, merge, parse
from devenv.wire import DebugInfo, DebugResult

USERS = """{
  // Use IntelliSense to learn about possible attributes.
  "version": "0.2.0",
  "configurations": [
    {"name": "mine // not a comment", "type": "node", "request": "launch",},
    {"name": "devenv: order", "type": "debugpy", "connect": {"port": 1}}, /* old */
  ],
  "compounds": [],
}
"""


def test_merge_keeps_the_users_entries_and_updates_its_own_in_place() -> None:
    new = entry("order", "python", "127.0.0.1", 9300, "/p/order")
    merged = merge(USERS, [new, entry("web", "node", "127.0.0.1", 9301, "/p/web")])
    doc = json.loads(merged.text)
    assert merged.dropped_comments
    assert [c["name"] for c in doc["configurations"]] == \
        ["mine // not a comment", "devenv: order", "devenv: web"]
    assert doc["configurations"][1] == new and doc["compounds"] == []
    assert doc["configurations"][1]["pathMappings"] == [{"localRoot": "/p/order",
                                                         "remoteRoot": "/p/order"}]
    assert json.loads(merge(merged.text, [new]).text) == doc  # again: the same file


def test_a_new_file_and_one_that_cannot_be_read() -> None:
    doc = json.loads(merge(None, [entry("web", "node", "127.0.0.1", 9301, "/w")]).text)
    assert doc["version"] == "0.2.0" and doc["configurations"][0]["port"] == 9301
    with pytest.raises(DevenvError, match="left as it is"):
        merge('{"configurations": [ {"name": }', [], where=".vscode/launch.json")
    with pytest.raises(DevenvError, match="configurations"):
        merge('{"configurations": {}}', [])


def test_non_ascii_is_written_as_it_is_and_nothing_changed_means_no_write(
        tmp_path: Path) -> None:
    path = tmp_path / ".vscode/launch.json"
    path.parent.mkdir()
    path.write_text('{"configurations": [{"name": "café ☕", "type": "node"}]}',
                    encoding="utf-8")
    result = DebugResult("api", True, DebugInfo("python", "127.0.0.1:9300"), "/p/é", 1)
    write_launch_json(path, result)
    text = path.read_text(encoding="utf-8")
    assert "café ☕" in text and '"/p/é"' in text and "\\u" not in text
    # again, with a comment added by hand: the file already says the same, it is left as is
    path.write_text("// mine\n" + text, encoding="utf-8")
    before = path.stat().st_mtime_ns
    write_launch_json(path, result)
    assert path.read_text(encoding="utf-8").startswith("// mine\n")
    assert path.stat().st_mtime_ns == before and not (path.parent / "launch.json.bak").exists()
    assert not merge(path.read_text(encoding="utf-8"), [entry(
        "api", "python", "127.0.0.1", 9300, "/p/é")]).changed


def test_a_file_that_cannot_be_read_is_refused_before_anything_is_asked() -> None:
    with pytest.raises(DevenvError) as caught:
        parse('{"configurations": [ {"name": }', where=".vscode/launch.json")
    assert "--no-launch-json" in (caught.value.hint or "")
    assert parse(None)["configurations"] == [] and parse("  \n")["version"] == "0.2.0"
