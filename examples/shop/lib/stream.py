"""A consumer of the Redis stream `orders`, in a consumer group: each event handled once,
acknowledged after it is handled, resumed after a restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from shoplib import NAME, log, rds


def consume(group: str, handle: Callable[[dict[str, str]], None]) -> None:
    def loop() -> None:
        while True:
            try:
                try:
                    rds().xgroup_create("orders", group, id="0", mkstream=True)
                except Exception as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                while True:
                    batches = rds().xreadgroup(group, NAME, {"orders": ">"}, count=50,
                                               block=1000)
                    for _, events in batches or []:
                        for event_id, fields in events:
                            handle(fields)
                            rds().xack("orders", group, event_id)
            except Exception as exc:
                log(f"stream consumer: {exc!r}; retrying")
                time.sleep(0.5)

    threading.Thread(target=loop, daemon=True, name=f"{group}-consumer").start()
