"""Merging devenv's attach configurations into .vscode/launch.json (JSONC)."""

from __future__ import annotations

import json

import pytest

from devenv.core.errors import DevenvError
from devenv.launchjson import entry, merge

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
