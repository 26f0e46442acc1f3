"""Services' own Prometheus metrics: scraped from each instance, re-exposed with labels.

A service that declares `metrics: {path: /metrics}` is scraped on each running instance every
`monitoring.scrape_interval`. Its families keep their names (but for one starting with
`devenv`, ours, which gets a `service_` prefix) and gain `service` and `instance` labels
(their own labels of those names become `exported_service` / `exported_instance`, as
Prometheus does). A failed scrape (refused, timed out, not HTTP 200, not exposition text) is
kept per instance: `devenv_scrape_up` is 0 and the service's status shows why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from devenv.wire import State

if TYPE_CHECKING:
    from devenv.engine.reconciler import Engine

TIMEOUT = 2.0
MAX_SERIES = 10_000  # series one instance may give; more is a scrape error
MAX_BYTES = 4 * 1024 * 1024
DEFAULT_INTERVAL = 5.0
OURS = "devenv"  # the prefix of the engine's own series
SCRAPED_STATES = (State.HEALTHY, State.UNHEALTHY)  # a starting instance may not listen yet


@dataclass(frozen=True)
class Target:
    service: str
    instance: str  # <service>-<replica>, as service.instance.id
    url: str


@dataclass(frozen=True)
class Result:
    families: tuple[Metric, ...]
    error: str | None
    seconds: float


class ScrapeError(Exception):
    pass


def parse(text: str) -> list[Metric]:
    """Families of Prometheus exposition text; ScrapeError saying what is wrong."""
    try:
        return list(text_string_to_metric_families(text))
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on bad text
        raise ScrapeError(f"not Prometheus exposition text: {exc}") from exc


def relabel(families: Iterable[Metric], service: str, instance: str) -> list[Metric]:
    """The families with `service` and `instance` labels added (theirs of those names
    renamed `exported_*`) and any name of ours prefixed `service_`."""
    out = []
    for family in families:
        rename = family.name.startswith(OURS)
        name = f"service_{family.name}" if rename else family.name
        copy = Metric(name, family.documentation, family.type)
        for sample in family.samples:
            labels = {(f"exported_{k}" if k in ("service", "instance") else k): v
                      for k, v in sample.labels.items()}
            labels["service"], labels["instance"] = service, instance
            copy.add_sample(f"service_{sample.name}" if rename else sample.name, labels,
                            sample.value)
        out.append(copy)
    return out


def merge(groups: Iterable[Iterable[Metric]]) -> list[Metric]:
    """One family per name across instances (a name exposed with another type by another
    service is left out: one name, one type)."""
    merged: dict[str, Metric] = {}
    for families in groups:
        for family in families:
            have = merged.get(family.name)
            if have is None:
                have = merged[family.name] = Metric(family.name, family.documentation,
                                                    family.type)
            elif have.type != family.type:
                continue
            have.samples.extend(family.samples)
    return list(merged.values())


class Scraper:
    def __init__(self, engine: Engine, timeout: float = TIMEOUT):
        self.engine = engine
        self.timeout = timeout
        self.results: dict[tuple[str, str], Result] = {}
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    @property
    def interval(self) -> float:
        plan = self.engine.plan
        return float(plan.monitoring.scrape_interval) if plan else DEFAULT_INTERVAL

    def targets(self) -> list[Target]:
        found = []
        for runner in self.engine.runners.values():
            path = runner.plan.metrics_path
            if not path:
                continue
            for rep in runner.replicas:
                endpoint = rep.instance.endpoint if rep.instance else None
                if endpoint and rep.state in SCRAPED_STATES:
                    host, port = endpoint
                    found.append(Target(runner.name, f"{runner.name}-{rep.index}",
                                        f"http://{host}:{port}{path}"))
        return found

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="metrics-scrape")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def poke(self) -> None:
        """Scrape now (an instance serving metrics just became healthy), not at the next
        interval."""
        self._poke.set()

    async def _loop(self) -> None:
        while True:
            self._poke.clear()
            await self.scrape_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.interval)

    async def scrape_all(self) -> None:
        """Scrape every target once; forget instances that are gone; tell the runners."""
        targets = self.targets()
        if targets and self._session is None:
            # no keep-alive: a single-threaded service must not be held by an idle connection
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        results = await asyncio.gather(*(self.scrape(t) for t in targets))
        self.results = {(t.service, t.instance): r
                        for t, r in zip(targets, results, strict=True)}
        for runner in self.engine.runners.values():
            errors = [f"{inst}: {r.error}" for (svc, inst), r in sorted(self.results.items())
                      if svc == runner.name and r.error]
            runner.scrape_error = "; ".join(errors) or None

    async def scrape(self, target: Target) -> Result:
        start = time.monotonic()
        try:
            text = await self._fetch(target.url)
            # parsing a big exposition takes a while: off the event loop (the ingress runs on it)
            families = await asyncio.to_thread(_read, text, target)
            return Result(tuple(families), None, time.monotonic() - start)
        except ScrapeError as exc:
            return Result((), str(exc), time.monotonic() - start)

    async def _fetch(self, url: str) -> str:
        assert self._session is not None
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    raise ScrapeError(f"{url} answered HTTP {resp.status}")
                body = b""  # (read(n) gives what has arrived, up to n: read to the end)
                while len(body) <= MAX_BYTES and (chunk := await resp.content.read(
                        MAX_BYTES + 1 - len(body))):
                    body += chunk
                if len(body) > MAX_BYTES:
                    raise ScrapeError(f"{url} answered more than {MAX_BYTES // 2**20} MiB")
                return body.decode("utf-8", errors="replace")
        except TimeoutError as exc:
            raise ScrapeError(f"{url} did not answer within {self.timeout:g}s") from exc
        except aiohttp.ClientConnectorError as exc:
            raise ScrapeError(f"{url}: cannot connect ({exc.os_error.strerror})"
                              if exc.os_error else f"{url}: cannot connect") from exc
        except aiohttp.ClientError as exc:
            raise ScrapeError(f"{url}: {exc.__class__.__name__}: {exc}") from exc

    def up(self, service: str) -> int:
        """How many series the service's instances gave on their last scrape."""
        return sum(len(f.samples) for (svc, _), r in self.results.items() if svc == service
                   for f in r.families)

    def families(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("devenv_scrape_up",
                               "1 if the instance's own /metrics answered on the last scrape.",
                               labels=["service", "instance"])
        took = GaugeMetricFamily("devenv_scrape_duration_seconds",
                                 "How long the last scrape of the instance took.",
                                 labels=["service", "instance"])
        for (service, instance), result in sorted(self.results.items()):
            up.add_metric([service, instance], 0.0 if result.error else 1.0)
            took.add_metric([service, instance], round(result.seconds, 6))
        yield up
        yield took
        yield from merge(r.families for r in self.results.values())


def _read(text: str, target: Target) -> list[Metric]:
    """An instance's exposition, parsed and relabelled; too many series is a scrape error
    (the engine re-exposes every one: its own /metrics must stay quick)."""
    families = relabel(parse(text), target.service, target.instance)
    count = sum(len(f.samples) for f in families)
    if count > MAX_SERIES:
        raise ScrapeError(f"{target.url} gave {count} series, more than {MAX_SERIES}: "
                          "drop per-request labels (ids, raw paths) from its metrics")
    return families
