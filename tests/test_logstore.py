"""The log store: lines persisted per service, rotated, read back in order, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.engine import logstore
from devenv.engine.logstore import LogStore, query


def test_logs_rotate_and_read_back_in_order(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logstore, "MAX_BYTES", 2000)
    store = LogStore(tmp_path)
    store.set_secrets(["hunter22"])
    for i in range(400):
        store.add("api", "1", "out", f"line {i:03d} password=hunter22", ts=1_000_000 + i)
    store.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["api.log", "api.log.1", "api.log.2", "api.log.3"]  # 3 old ones kept
    assert all(p.stat().st_size <= 2200 for p in tmp_path.iterdir())
    lines = query(tmp_path, ["api"])
    numbers = [int(ln.text.split()[1]) for ln in lines]
    assert numbers == sorted(numbers) and numbers[-1] == 399  # oldest rotated away, in order
    assert len(numbers) < 400
    assert all("hunter22" not in ln.text and "********" in ln.text for ln in lines)
    assert [ln.text for ln in query(tmp_path, ["api"], tail=2)] == [
        "line 398 password=********", "line 399 password=********"]
