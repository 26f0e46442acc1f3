"""The docker runtime's and data layer's pure choices (no Docker Engine needed)."""

from __future__ import annotations

from typing import Any

from devenv.data.container import pick_running


def _c(cid: str, replica: int, created: int, name: str = "", **labels: str) -> dict[str, Any]:
    return {"Id": cid, "Created": created, "Names": [f"/devenv-p-1234-api-{replica}{name}"],
            "Labels": {"devenv.service": "api", "devenv.replica": str(replica), **labels}}


def test_exec_and_snapshots_pick_the_running_instance_never_a_one_off() -> None:
    listed = [_c("run", 2, 50, "-abc1-run", **{"devenv.oneoff": "1"}),  # newest: a one-off
              _c("old2", 2, 10), _c("new2", 2, 20), _c("one", 1, 30),
              _c("helper", 1, 40, **{"devenv.helper": "api"}),
              _c("legacy-run", 1, 45, "-abc2-run")]  # (one-offs before the label)
    assert pick_running(listed, 2)["Id"] == "new2"  # the replica asked, its newest
    assert pick_running(listed, 1)["Id"] == "one"
    assert pick_running(listed)["Id"] == "one"  # (data services: one replica)
    assert pick_running(listed, 3) is None
    assert pick_running([listed[0], listed[4]]) is None
