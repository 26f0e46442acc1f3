"""The Redis stream `orders`: publishing an event, and a consumer in a consumer group: each
event handled once, acknowledged after it is handled, resumed after a restart. An event
carries the `traceparent` of the span that published it; handling it is a span linked to
that one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import telemetry
from shoplib import NAME, log, rds


def publish(fields: dict[str, Any]) -> None:
    with telemetry.producer_span(fields):
        rds().xadd("orders", fields)


def consume(group: str, handle: Callable[[dict[str, str]], None]) -> None:
    def loop() -> None:
        while True:
            try:
                try:
                    with telemetry.quiet():
                        rds().xgroup_create("orders", group, id="0", mkstream=True)
                except Exception as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                while True:
                    with telemetry.quiet():  # (a span a second, waiting, says nothing)
                        batches = rds().xreadgroup(group, NAME, {"orders": ">"}, count=50,
                                                   block=1000)
                    for _, events in batches or []:
                        for event_id, fields in events:
                            with telemetry.consumer_span(group, event_id, fields):
                                handle(fields)
                                rds().xack("orders", group, event_id)
            except Exception as exc:
                log(f"stream consumer: {exc!r}; retrying")
                time.sleep(0.5)

    threading.Thread(target=loop, daemon=True, name=f"{group}-consumer").start()
