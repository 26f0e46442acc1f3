"""The load generator's pure parts: pattern validation (file:line), the histogram,
coordinated-omission accounting on virtual time, data sources, templates and extraction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devenv.core.errors import ConfigError
from devenv.loadtest import http
from devenv.loadtest.data import MISSING, DataSource, Draw, extract, json_path, read_csv, render
from devenv.loadtest.histogram import Histogram
from devenv.loadtest.pattern import Stage, load, threshold
from devenv.loadtest.schedule import Schedule
from devenv.loadtest.worker import Recorder, open_loop
from fakes import now, run_virtual


def test_every_problem_of_a_pattern_file_is_named_with_its_line(tmp_path: Path) -> None:
    f = tmp_path / "load.yml"
    f.write_text("""scenarios:
  buy:
    wieght: 2
    steps:
      - get: /api/products
      - post: api/checkout
        json: {user: "${nobody}"}
        check: {status: 999}
stages:
  - {rate: fast, duration: 10s}
  - {users: 5}
thresholds:
  - p95 < 300
""")
    with pytest.raises(ConfigError) as caught:
        load(f, "load.yml")
    details = caught.value.details
    expected = ["load.yml:3 scenarios.buy.wieght: unknown key (did you mean 'weight'?)",
                "load.yml:6 scenarios.buy.steps[1].post: 'api/checkout'",
                "load.yml:6 scenarios.buy.steps[1]: '${nobody}' is not a data source",
                "load.yml:8 scenarios.buy.steps[1].check.status: 999",
                "load.yml:10 stages[0].rate: 'fast' is not a rate",
                "load.yml:11 stages[1]: give its duration",
                "load.yml:13 thresholds[0]: 'p95 < 300': give the unit"]
    for start in expected:
        assert any(d.startswith(start) for d in details), (start, details)
    assert caught.value.exit_code == 2


def test_the_shipped_shop_patterns_are_valid() -> None:
    shop = Path(__file__).resolve().parents[1] / "examples" / "shop"
    checkout = load(shop / "load-checkout.yml")
    assert [s.name for s in checkout.scenarios[0].steps] == ["products", "checkout", "order"]
    mix = load(shop / "load-mix.yml")
    assert {s.kind for s in mix.stages} == {"ramp", "rate", "spike"}


def test_thresholds_read_units() -> None:
    t = threshold("p95 < 0.3s")
    assert not isinstance(t, str) and t.value == 300 and t.holds(299) and not t.holds(300)
    e = threshold("errors < 1%")
    assert not isinstance(e, str) and e.value == 0.01
    assert isinstance(threshold("p97 < 3ms"), str)


def test_histogram_percentiles_within_one_percent_and_merge() -> None:
    a, b = Histogram(), Histogram()
    for us in range(1, 50_001):
        a.record(us)
    for us in range(50_001, 100_001):
        b.record(us)
    a.merge(Histogram.from_sparse(b.sparse(), b.max_us))
    assert a.total == 100_000 and a.max_us == 100_000
    for p in (50, 90, 95, 99):
        assert a.percentile(p) == pytest.approx(p * 1000, rel=0.01)
    assert a.summary_ms()["max"] == 100.0


def test_a_stalled_server_shows_in_open_model_latency() -> None:
    """100 arrivals a second on one connection; the server stalls for one second at t=1.
    Counted from the intended times, about half the arrivals of that second wait over
    500 ms (a tool that times from its own late send would show one slow request)."""

    async def scenario() -> Histogram:
        start = now()
        rec = Recorder(start, now)
        stages = (Stage("rate", 4.0, 100.0, 100.0),)

        async def one(intended: float) -> None:
            t = now()
            await asyncio.sleep(1.0 if 1.0 <= t - start < 1.01 else 0.001)
            rec.record("s/x", intended, now())

        await open_loop(Schedule(stages), start, 1, now, one, lambda: False, rec, start + 10)
        return rec.steps["s/x"].hist

    hist = run_virtual(scenario())
    assert hist.total == 400
    slow = sum(n for i, n in enumerate(hist.counts) if n and i >= 0 and _upper(i) > 500_000)
    assert 40 <= slow <= 60
    assert hist.max_us >= 990_000 and hist.percentile(90) > 100_000


def _upper(i: int) -> int:
    from devenv.loadtest.histogram import upper_of
    return upper_of(i)


def test_ramp_arrivals_follow_the_rate() -> None:
    s = Schedule((Stage("ramp", 10.0, 10.0, 30.0),))
    times = []
    while (at := s.next()) is not None:
        times.append(at)
    assert len(times) == 200  # (10 + 30) / 2 * 10
    assert sum(1 for t in times if t < 5) == pytest.approx(75, abs=1)  # 10..20/s in 5 s
    parts = [Schedule((Stage("rate", 1.0, 10.0, 10.0),), i, 2) for i in range(2)]
    assert sorted(t for p in parts for t in iter(p.next, None)) == \
        pytest.approx([k / 10 for k in range(10)])


def test_data_sources_templates_and_extraction(tmp_path: Path) -> None:
    csv = tmp_path / "products.csv"
    csv.write_text("id,sku\n1,kettle\n2,mug\n")
    rows = read_csv(csv)
    assert rows == [{"id": 1, "sku": "kettle"}, {"id": 2, "sku": "mug"}]
    draw = Draw((DataSource("product", tuple(rows)), DataSource("user", (7, 8, 9))))
    first, second, third = draw.next(), draw.next(), draw.next()
    assert [first["user"], second["user"], third["user"]] == [7, 8, 9]
    assert third["product"]["sku"] == "kettle"  # cycles
    body = render({"user_id": "${user}", "items": [{"product_id": "${product.id}"}],
                   "note": "for ${product.sku}"}, first)
    assert body == {"user_id": 7, "items": [{"product_id": 1}], "note": "for kettle"}
    doc = {"order_id": 42, "items": [{"sku": "a"}]}
    assert extract(doc, json_path("$.order_id")) == 42
    assert extract(doc, json_path('$.items[0]["sku"]')) == "a"
    assert extract(doc, json_path("$.items[3]")) is MISSING
    with pytest.raises(ValueError):
        json_path("order_id")


def test_response_framing_content_length_and_chunked() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 20"
    assert http.head(raw) == (200, 38, 2, False)
    chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    status, start, length, _ = http.head(chunked) or (0, 0, 0, False)
    assert (status, length) == (201, http.CHUNKED)
    end = http.chunked_end(chunked, start)
    assert end == len(chunked) and http.dechunk(chunked[start:end]) == b"abc"
    assert http.chunked_end(chunked[:-2], start) == -1
