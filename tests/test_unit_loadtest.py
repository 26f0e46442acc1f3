"""The load generator's pure parts: pattern validation (file:line), the histogram,
coordinated-omission accounting on virtual time, data sources, templates and extraction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devenv.cli.commands import load_test
from devenv.core.errors import ConfigError, DevenvError, UsageError
from devenv.loadtest import generator, http, report, units
from devenv.loadtest.data import (
    MISSING,
    DataSource,
    Draw,
    TemplateError,
    extract,
    json_path,
    read_csv,
    render,
)
from devenv.loadtest.histogram import Histogram
from devenv.loadtest.pattern import (
    Check,
    Pattern,
    Scenario,
    Stage,
    Step,
    Threshold,
    load,
    threshold,
)
from devenv.loadtest.results import Results
from devenv.loadtest.schedule import Schedule
from devenv.loadtest.worker import STOP_CHECK, Job, Recorder, Target, Worker, open_loop
from devenv.wire import Replicas, ServiceStatus, State
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
            rec.record(("s", "x"), intended, now())

        await open_loop(Schedule(stages), start, 1, now, one, lambda: False, rec, start + 10)
        return rec.steps[("s", "x")].hist

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


def _step(name: str, thresholds: tuple[Threshold, ...] = ()) -> Step:
    return Step(name, "GET", "/", thresholds=thresholds)


def _rule(text: str) -> Threshold:
    t = threshold(text, "load.yml:9")
    assert not isinstance(t, str)
    return t


def test_steps_are_keyed_by_scenario_and_step_and_an_empty_scope_breaks() -> None:
    """A scenario named `api/v1` keeps its own figures (a "/" joined key once lost them, so
    its threshold measured 0 and passed); a threshold on a scope nothing was sent to
    breaks with "no requests" instead of passing on a 0."""
    rec = Recorder(0.0, lambda: 0.0)
    for _ in range(10):
        rec.record(("api/v1", "get/x"), 0.0, 0.005)  # 5 ms each
    pattern = Pattern(
        (Scenario("api/v1", (_step("get/x", (_rule("p50 < 1ms"),)),),
                  thresholds=(_rule("p95 < 1ms"),)),
         Scenario("api", (_step("v1/get/x"),), thresholds=(_rule("p99 < 1s"),))),
        (Stage("users", 1.0, users=1),), thresholds=(_rule("p50 < 1s"),))
    results = Results("t", "asked", duration_s=1.0)
    results.add_seconds(rec.take_seconds(10))
    results.add_done(rec.done())
    verdicts = {v.scope: v for v in results.check(pattern)}
    assert verdicts[""].ok  # 5 ms < 1 s over all ten
    assert not verdicts["api/v1"].ok and verdicts["api/v1"].actual == pytest.approx(5, rel=0.05)
    assert not verdicts["api/v1/get/x"].ok
    empty = verdicts["api"]
    assert not empty.ok and empty.why == "no requests"
    assert empty.as_json()["reason"] == "no requests" and empty.as_json()["actual"] is None
    assert set(results.as_json()["steps"]) == {"api/v1/get/x"}


def test_a_thresholds_figure_is_given_in_the_unit_it_is_written_in() -> None:
    """`errors < 1%` broken by 1 error in 4 says 25 (%), in the JSON as in the summary, not
    the fraction 0.25 under a threshold written in percent."""
    rec = Recorder(0.0, lambda: 0.0)
    for i in range(4):
        rec.record(("s", "x"), 0.0, 0.002, error="status" if i == 0 else None)
    pattern = Pattern((Scenario("s", (_step("x"),)),), (Stage("users", 1.0, users=1),),
                      thresholds=(_rule("errors < 1%"), _rule("rps > 100"),
                                  _rule("p50 < 1ms")))
    results = Results("t", "asked", duration_s=1.0)
    results.add_seconds(rec.take_seconds(10))
    results.add_done(rec.done())
    verdicts = results.check(pattern)
    errors, rps, p50 = [v.as_json() for v in verdicts]
    assert (errors["actual"], errors["unit"], errors["ok"]) == (25.0, "%", False)
    assert (rps["actual"], rps["unit"]) == (4.0, "/s")
    assert p50["unit"] == "ms" and p50["actual"] == pytest.approx(2, rel=0.1)
    # the summary and the HTML report say it alike, in that unit
    assert [v.said for v in verdicts[:2]] == ["was 25.00%", "was 4/s"]
    assert verdicts[2].said.startswith("was 2.0") and verdicts[2].said.endswith(" ms")
    page = report.page(results, [])
    assert "errors &lt; 1% (was 25.00%)" in page and "rps &gt; 100 (was 4/s)" in page


def test_open_model_counts_late_and_cancelled_arrivals() -> None:
    """100 arrivals a second for 1 s on one connection to a server taking 20 ms: about
    half wait for the connection (late), and the run cut off at 1.5 s leaves the rest due
    but never sent; both are counted and said."""

    async def scenario() -> Recorder:
        start = now()
        rec = Recorder(start, now)

        async def one(intended: float) -> None:
            await asyncio.sleep(0.02)
            rec.record(("s", "x"), intended, now())

        loop = open_loop(Schedule((Stage("rate", 1.0, 100.0, 100.0),)), start, 1, now, one,
                         lambda: False, rec, start + 1.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop, 1.5)
        return rec

    rec = run_virtual(scenario())
    answered = rec.steps[("s", "x")].requests
    assert rec.arrivals == answered and 70 <= answered <= 76
    assert rec.arrivals + rec.not_sent == 100  # every arrival due: sent or counted not sent
    assert rec.busy >= answered - 2
    results = Results("t", "100/s for 1s", duration_s=1.0, rate_asked=100.0)
    results.add_done(rec.done())
    generator = results.as_json()["generator"]
    assert generator["late"] == rec.busy and generator["late_share"] > 0.9
    assert generator["not_sent"] == rec.not_sent
    assert results.behind is not None and "started late" in results.behind
    assert f"{rec.not_sent:,} arrivals due were never sent" in results.behind


def test_values_are_percent_encoded_in_paths_and_line_breaks_refused_in_headers() -> None:
    step = Step("read", "GET", "/orders/${id}?q=${q}", (("X-User", "${user}"),))
    job = Job(Pattern((Scenario("s", (step,)),), (Stage("users", 1.0, users=1),)),
              Target("127.0.0.1", 1, "localhost"))
    worker = Worker(job, lambda message: None, lambda: False)
    raw = worker._raw(step, {"id": "../admin", "q": "a b&c=d", "user": "ann"})
    assert raw.startswith(b"GET /orders/..%2Fadmin?q=a%20b%26c%3Dd HTTP/1.1\r\n")
    assert b"\r\nX-User: ann\r\n" in raw
    with pytest.raises(TemplateError):
        worker._raw(step, {"id": 1, "q": "x", "user": "ann\r\nX-Admin: yes"})


def test_pattern_ramps_from_zero_header_rules_and_a_list_file(tmp_path: Path) -> None:
    f = tmp_path / "load.yml"
    f.write_text("scenarios:\n  s:\n    steps: [{get: /}]\nstages:\n"
                 "  - {ramp: 0/s..10/s, duration: 10s}\n  - {ramp: 10/s..0/s, duration: 2s}\n")
    assert [(s.rate, s.to) for s in load(f).stages] == [(0, 10), (10, 0)]
    f.write_text("scenarios:\n  s:\n    steps:\n      - get: /\n        headers:\n"
                 "          'X Bad': 1\n          X-Ok: \"a\\r\\nX-Admin: yes\"\n"
                 "stages:\n  - {ramp: 0/s..0/s, duration: 1s}\n")
    with pytest.raises(ConfigError) as caught:
        load(f, "load.yml")
    assert any(d.startswith("load.yml:6 scenarios.s.steps[0].headers.X Bad: not a header")
               for d in caught.value.details), caught.value.details
    assert any(d.startswith("load.yml:7 scenarios.s.steps[0].headers.X-Ok: a header value "
                            "cannot hold a line break") for d in caught.value.details)
    assert any("0/s to 0/s sends nothing" in d for d in caught.value.details)
    f.write_text("- get: /\n- get: /x\n")
    with pytest.raises(ConfigError) as caught:
        load(f, "load.yml")
    assert caught.value.hint and "scenarios:" in caught.value.hint
    assert "devenv config validate" not in caught.value.hint


def test_open_files_are_made_room_for_or_refused_with_the_limit() -> None:
    pattern = Pattern((Scenario("s", (_step("x"),)),), (Stage("users", 1.0, users=3000),))
    need = generator.files_needed(pattern, 2)
    assert need == 1500 + generator.FILES_SPARE
    raised: list[tuple[int, int]] = []
    generator.check_open_files(need, lambda: (1024, 4096), raised.append)
    assert raised == [(need, 4096)]  # the soft limit is raised up to the hard one
    with pytest.raises(UsageError) as caught:
        generator.check_open_files(need, lambda: (1024, 1024), raised.append)
    assert "limit of 1,024" in caught.value.message and caught.value.exit_code == 2
    assert f"ulimit -n {need}" in (caught.value.hint or "")
    with pytest.raises(UsageError, match="--workers -1: give 1 to 64"):
        generator.run(pattern, Target("127.0.0.1", 1, "localhost"), workers=-1)


def test_csv_cells_keep_their_text_and_templates_name_real_columns(tmp_path: Path) -> None:
    (tmp_path / "skus.csv").write_bytes("\ufeffsku,qty\n007,2\n1_000,1.5\n".encode())
    assert read_csv(tmp_path / "skus.csv") == [{"sku": "007", "qty": 2},
                                               {"sku": "1_000", "qty": 1.5}]
    f = tmp_path / "load.yml"
    f.write_text("scenarios:\n"
                 "  buy:\n"
                 "    data: {p: {csv: skus.csv}}\n"
                 "    steps:\n"
                 "      - get: /items/${p.skuu}\n"
                 "      - {get: /w, method: POST}\n"
                 "stages: [{rate: 5/s, duration: 1s}]\n"
                 "thresholds: [errors < 5]\n")
    with pytest.raises(ConfigError) as err:
        load(f, "load.yml")
    text = "\n".join(err.value.details)
    assert "load.yml:5 scenarios.buy.steps[0]: '${p.skuu}': p has no column 'skuu' " \
        "(it has qty, sku) (did you mean 'sku'?)" in text
    assert "load.yml:6 scenarios.buy.steps[1]: give the request once" in text
    assert "load.yml:8 thresholds[0]: 'errors < 5': give errors as a percentage" in text


def test_a_path_past_ascii_is_percent_encoded_and_headers_go_as_utf8() -> None:
    raw = http.encode("GET", "/search?q=日本 茶", "h", {"X-Who": "Łukasz"})
    assert raw.startswith(b"GET /search?q=%E6%97%A5%E6%9C%AC%20%E8%8C%B6 HTTP/1.1\r\n")
    assert "X-Who: Łukasz\r\n".encode() in raw
    assert http.encode("GET", "/a%2Fb?x=1&y=[2]", "h").startswith(b"GET /a%2Fb?x=1&y=[2] ")


def test_a_json_check_tells_true_from_1_and_json_sets_one_content_type() -> None:
    step = Step("make", "POST", "/orders", (("content-type", "application/vnd+json"),),
                json={"n": 1}, check=Check(json=(("$.ok", ("ok",), 1),)))
    job = Job(Pattern((Scenario("s", (step,)),), (Stage("users", 1.0, users=1),)),
              Target("127.0.0.1", 1, "localhost"))
    worker = Worker(job, lambda message: None, lambda: False)
    raw = worker._raw(step, {})
    assert raw.lower().count(b"content-type") == 1
    assert worker._checked(step, b'{"ok": true}', {}) == "$.ok: not 1"  # (what failed)
    assert worker._checked(step, b'{"ok": 1}', {}) == worker._checked(step, b'{"ok": 1.0}', {}) \
        == ""
    assert worker._checked(step, b'{"no": 1}', {}) == "$.ok: missing"
    assert worker._checked(step, b'<html>', {}) == "the body is not JSON"


def test_open_model_stops_waiting_for_its_next_arrival_on_ctrl_c() -> None:
    """1 arrival a second: a slot waits ~1 s for the next; a Ctrl-C (the stop flag) ends the
    wait within STOP_CHECK (before the arrival's time), and that arrival is not sent."""
    stop = [False]

    async def scenario() -> tuple[Recorder, float]:
        start = now()
        rec = Recorder(start, now)

        async def one(intended: float) -> None:
            rec.record(("s", "x"), intended, now())

        async def ctrl_c() -> None:
            await asyncio.sleep(0.3)  # (virtual: the slot waits for its arrival at 1 s)
            stop[0] = True

        pressed = asyncio.ensure_future(ctrl_c())
        await open_loop(Schedule((Stage("rate", 60.0, 1.0, 1.0),)), start, 1, now, one,
                        lambda: stop[0], rec, start + 60.0)
        await pressed
        return rec, now() - start

    rec, took = run_virtual(scenario())
    assert rec.arrivals == 1 and took <= 0.3 + STOP_CHECK + 1e-6 < 1.0


def test_an_arrival_cancelled_while_late_is_not_counted_late() -> None:
    async def scenario() -> Recorder:
        start = now() - 10.0  # every arrival is long due: each is taken late
        rec = Recorder(start, now)

        async def never(intended: float) -> None:
            await asyncio.sleep(3600)

        loop = open_loop(Schedule((Stage("rate", 1.0, 50.0, 50.0),)), start, 4, now, never,
                         lambda: False, rec, start + 1.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop, 1.0)
        return rec

    rec = run_virtual(scenario())
    assert rec.arrivals == 0 and rec.busy == 0 and rec.not_sent == 50


def test_a_saturated_generator_is_named_as_the_limit() -> None:
    results = Results("t", "100000/s for 3s", duration_s=3.0, rate_asked=100000.0, workers=1)
    results.add_done({"steps": [], "arrivals": 1000, "not_sent": 0, "lag_max_s": 0.0,
                      "lagged": 0, "cut_off": 0, "busy": 900, "last_s": 9.5, "cpu_share": 0.98})
    assert results.behind is not None
    assert results.behind.startswith("the generator could not keep the asked rate (a worker "
                                     "used 98% of a core")
    assert "give more --workers (it had 1" in results.behind
    calm = Results("t", "100/s", duration_s=3.0, rate_asked=100.0)
    calm.add_done({"steps": [], "arrivals": 1000, "not_sent": 0, "lag_max_s": 0.0,
                   "lagged": 0, "cut_off": 0, "busy": 900, "last_s": 3.0, "cpu_share": 0.3})
    assert calm.behind is not None and "every connection was busy" in calm.behind


def test_rates_are_over_the_time_answers_came_in() -> None:
    assert generator.run_time(10.0, 9.99, 10.2, None) == 10.0  # a run as asked
    assert generator.run_time(3.0, 9.5, 10.6, None) == 9.5  # answers long after the stages
    assert generator.run_time(3.0, 9.5, 4.0, None) == 4.0  # (never past what elapsed)
    assert generator.run_time(60.0, 1.0, 1.6, 0.5) == 1.0  # Ctrl-C; answers came after it
    assert generator.run_time(60.0, 0.2, 3.0, 0.5) == 0.5


def test_values_round_trip_and_nested_json_checks_tell_true_from_1(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("a,b,c,d\n-0,1.50,nan,3.0\n")
    assert read_csv(tmp_path / "c.csv") == [{"a": "-0", "b": "1.50", "c": "nan", "d": 3.0}]
    assert http.encode("GET", "/p?q=100% off&r=%41", "h").startswith(
        b"GET /p?q=100%25%20off&r=%41 HTTP/1.1")
    step = Step("s", "GET", "/", check=Check(json=(("$.a", ("a",), [1, {"b": True}]),)))
    assert Worker._checked(step, b'{"a": [true, {"b": true}]}', {})  # (failed)
    assert Worker._checked(step, b'{"a": [1, {"b": 1}]}', {})
    assert Worker._checked(step, b'{"a": [1.0, {"b": true}]}', {}) == ""  # (passed)


def test_columns_of_inline_rows_and_a_value_extracted_over_a_source(tmp_path: Path) -> None:
    f = tmp_path / "load.yml"
    f.write_text("scenarios:\n"
                 "  s:\n"
                 "    data: {p: [{sku: a, coupon: X1}, {sku: b}], user: [{id: 1}]}\n"
                 "    steps:\n"
                 "      - {get: '/c/${p.coupon}', extract: {user: $.user}}\n"
                 "      - get: /u/${user.name}\n"
                 "stages: [{rate: 5/s, duration: 1s}]\n")
    assert len(load(f).scenarios[0].steps) == 2
    # rows that are all empty mappings are mappings still, with no field at all
    f.write_text("scenarios:\n  s:\n    data: {e: [{}]}\n    steps: [{get: '/e/${e.id}'}]\n"
                 "stages: [{rate: 5/s, duration: 1s}]\n")
    with pytest.raises(ConfigError) as caught:
        load(f, "load.yml")
    assert caught.value.details == ["load.yml:4 scenarios.s.steps[0]: '${e.id}': e has no "
                                    "column 'id' (its rows are empty mappings)"]


def test_an_arrival_a_free_connection_starts_late_is_lag_not_a_busy_connection() -> None:
    """2 arrivals a second on 8 connections, the loop 5 ms late to its start: the first
    arrival is taken 5 ms late by a connection that was free all along. That is not "every
    connection was busy", and 5 ms is no generator lag worth a word: nothing is said."""

    async def scenario() -> Recorder:
        start = now() - 0.005
        rec = Recorder(start, now)

        async def one(intended: float) -> None:
            await asyncio.sleep(0.002)
            rec.record(("s", "x"), intended, now())

        await open_loop(Schedule((Stage("rate", 2.0, 2.0, 2.0),)), start, 8, now, one,
                        lambda: False, rec, start + 2.0)
        return rec

    rec = run_virtual(scenario())
    assert rec.arrivals == 4 and rec.busy == 0 and rec.lagged == 0
    assert 0.004 < rec.lag_max_s < 0.006
    results = Results("t", "2/s for 2s", duration_s=2.0, rate_asked=2.0)
    results.add_done(rec.done())
    assert results.behind is None


def test_arrivals_started_late_with_free_connections_blame_a_busy_machine() -> None:
    """Over 1% of the arrivals started over 10 ms late with connections free while the
    generator used little of its core: the machine was busy, not the generator at its
    limit (more workers would not help) nor the connections."""
    results = Results("t", "200/s for 3s", duration_s=3.0, rate_asked=200.0, workers=1)
    results.add_done({"steps": [], "arrivals": 600, "not_sent": 0, "lag_max_s": 0.09,
                      "lagged": 12, "cut_off": 0, "busy": 0, "last_s": 3.0, "cpu_share": 0.07})
    assert results.behind is not None
    assert results.behind.startswith("12 of 600 arrivals (2%) started up to 90 ms late with "
                                     "connections free, while the generator used 7% of a "
                                     "core: the machine was busy")
    assert "--workers" not in results.behind and "every connection" not in results.behind
    one = Results("t", "200/s for 3s", duration_s=3.0, rate_asked=200.0, workers=1)
    one.add_done({"steps": [], "arrivals": 600, "not_sent": 0, "lag_max_s": 0.09,
                  "lagged": 1, "cut_off": 0, "busy": 0, "last_s": 3.0, "cpu_share": 0.07})
    assert one.behind is None  # (one hiccup: the rate was kept)
    assert one.as_json()["generator"]["late_max_ms"] == 90.0


def test_after_a_ctrl_c_only_arrivals_due_by_it_count_as_not_sent() -> None:
    """20 arrivals a second for 20 s to a server that never answers, Ctrl-C at 2 s, the
    requests in flight cut off 2 s later: the arrivals due by the Ctrl-C (40: 10 in flight,
    30 waiting for a connection) are not sent; the 360 due after it are not counted."""
    stop = [False]

    async def scenario() -> Recorder:
        start = now()
        rec = Recorder(start, now)

        async def never(intended: float) -> None:
            await asyncio.sleep(3600)

        async def ctrl_c() -> None:
            await asyncio.sleep(2.0)
            rec.stopped_at = now()
            stop[0] = True

        pressed = asyncio.ensure_future(ctrl_c())
        loop = open_loop(Schedule((Stage("rate", 20.0, 20.0, 20.0),)), start, 10, now, never,
                         lambda: stop[0], rec, start + 20.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop, 4.0)
        await pressed
        return rec

    rec = run_virtual(scenario())
    assert rec.arrivals == 0 and 39 <= rec.not_sent <= 41, rec.not_sent


def test_a_pattern_url_fields_of_plain_values_and_duplicate_steps_are_named_in_order(
        tmp_path: Path) -> None:
    f = tmp_path / "load.yml"
    f.write_text("""url: http://127.0.0.1:8080/api?x=1
scenarios:
  a:
    data: {n: [1, 2], user: [{id: 1}]}
    steps:
      - 42
      - {name: x, get: "/echo/${n.id}"}
      - {name: y, get: "/u/${user.id}"}
      - {name: x, get: /}
stages: [{rate: 0/s, duration: 1s}]
""")
    with pytest.raises(ConfigError) as caught:
        load(f, "load.yml")
    assert caught.value.details == [
        "load.yml:1 url: 'http://127.0.0.1:8080/api?x=1': a URL that other paths go under "
        "cannot have a query",
        "load.yml:6 scenarios.a.steps[0]: expected a mapping of keys",
        "load.yml:7 scenarios.a.steps[1]: '${n.id}': the values of n are not mappings, so "
        "they have no field 'id'; write ${n}",
        "load.yml:9 scenarios.a.steps[3].name: a second step named 'x'; give each step its "
        "own name",
        "load.yml:10 stages[0].rate: '0/s' is not a rate like 200/s or 600/m"]
    for url, problem in [("ftp://x", "give an http:// URL"), ("42", "give an http:// URL"),
                         ("http://h:p/", "its port must be a number")]:
        f.write_text(f"url: {url}\nscenarios: {{a: {{steps: [{{get: /}}]}}}}\n"
                     "stages: [{users: 1, duration: 1s}]\n")
        with pytest.raises(ConfigError) as caught:
            load(f, "load.yml")
        assert caught.value.details[0].startswith("load.yml:1 url: ") and \
            problem in caught.value.details[0], caught.value.details


def test_a_rate_in_exponent_form_is_read_and_refused_with_the_limit() -> None:
    assert units.rate("2.5e2/s") == 250.0
    assert units.rate_problem(units.rate("1e9/s")) == \
        "1,000,000,000/s is over the limit of 1,000,000/s"


def _service(url: str | None, ready: int = 1, state: State = State.HEALTHY,
             detail: str = "") -> ServiceStatus:
    return ServiceStatus(name="svc", state=state, detail=detail, replicas=Replicas(ready, 1),
                         url=url, restarts=0, reloads=0, last_reload=None, instances=[])


def test_a_service_that_cannot_answer_http_now_is_refused_before_the_run() -> None:
    load_test._ready(_service("http://127.0.0.1:8080"))  # healthy: no word
    with pytest.raises(UsageError, match="service 'svc' is a Redis data service; load-test "
                       "sends HTTP requests"):
        load_test._ready(_service("redis://:***@127.0.0.1:6379/0"))
    with pytest.raises(UsageError, match="is a PostgreSQL data service"):
        load_test._ready(_service("postgresql://app:***@127.0.0.1:5432/app"))
    with pytest.raises(DevenvError, match=r"service 'svc' has no instance ready \(crashed: "
                       r"exited with code 1\)") as caught:
        load_test._ready(_service("http://127.0.0.1:8080", 0, State.CRASHED,
                                  "exited with code 1"))
    assert caught.value.exit_code == 1 and "devenv logs svc" in (caught.value.hint or "")
    with pytest.raises(DevenvError, match="has no address"):
        load_test._ready(_service(None))
    assert units.shown(1e6) == "1,000,000/s" and units.shown(10 / 60) == "0.167/s"
    assert units.rate_problem(1_000_000.5) == "1,000,000.500/s is over the limit of 1,000,000/s"
