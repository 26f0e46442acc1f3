"""The dashboard's time series: rate and p95 per 5-second bucket, resource samples, and
memory that stays bounded however many requests and services come by."""

from __future__ import annotations

from devenv.telemetry.model import RequestSeen
from devenv.telemetry.series import BINS, Series, bin_upper, latency_bin

T0 = 1_700_000_000.0  # a bucket boundary (divisible by 5)


def seen(service: str, at: float, duration_s: float, status: int = 200) -> RequestSeen:
    return RequestSeen(route="/", service=service, instance=f"{service}-1", method="GET",
                       path="/", status=status, start_ns=int(at * 1e9), duration_s=duration_s)


def test_rate_and_p95_per_bucket() -> None:
    series = Series()
    for i in range(100):  # 1..100 ms within one bucket
        series.request(seen("api", T0 + i * 0.01, (i + 1) / 1000))
    series.request(seen("api", T0 + 5.5, 0.002, status=503))  # the next bucket
    snap = series.snapshot(T0 + 6)
    api = snap["services"]["api"]
    assert snap["start"] == T0 + 5 - 179 * 5 and len(api["rate"]) == 180
    assert api["rate"][-2:] == [20.0, 0.2]  # 100 requests in 5 s, then 1
    assert 95 <= api["p95_ms"][-2] <= 95 * 1.05  # bins are 5% wide
    assert api["errors"][-2:] == [0, 1]
    assert api["rate"][0] == 0.0 and api["p95_ms"][0] is None  # no requests then


def test_latency_bins_cover_every_duration() -> None:
    assert latency_bin(0) == 0 and latency_bin(-1) == 0
    assert latency_bin(10_000) == BINS - 1  # longer than the last bin: counted in it
    for seconds in (0.0003, 0.012, 0.5, 7.0):
        assert seconds <= bin_upper(latency_bin(seconds)) <= seconds * 1.05


def test_old_buckets_leave_the_window_and_memory_stays_bounded() -> None:
    series = Series()
    for minute in range(60):  # an hour of traffic, one request a second
        for s in range(60):
            at = T0 + minute * 60 + s
            series.request(seen("api", at, 0.001 * (1 + s % 7)))
            if s % 5 == 0:
                series.sample(at, "api", 12.5, 50_000_000)
    now = T0 + 3600
    snap = series.snapshot(now)["services"]["api"]
    assert len(series._requests["api"]) == series.size == 180
    assert len(series._samples["api"]) == 180
    assert all(len(b.bins) <= 7 for b in series._requests["api"])  # counts, not samples
    assert snap["rate"][-1] == 0.0 and snap["rate"][-2] == 1.0  # now's bucket: nothing yet
    assert snap["cpu"][-2] == 12.5 and snap["rss"][-2] == 50_000_000
    # fifteen minutes later with no traffic, nothing is left in the window
    later = series.snapshot(now + 15 * 60)["services"]["api"]
    assert set(later["rate"]) == {0.0} and set(later["cpu"]) == {None}


def test_resource_samples_latest_in_a_bucket_wins_and_gaps_stay_empty() -> None:
    series = Series()
    series.sample(T0, "db", 1.0, 100)
    series.sample(T0 + 2, "db", 3.0, 300)  # same bucket: replaces
    series.sample(T0 + 15, "db", 4.0, 400)  # two buckets skipped
    series.sample(T0 + 1, "db", 9.0, 900)  # older than the newest bucket: ignored
    cpu = series.snapshot(T0 + 16)["services"]["db"]["cpu"]
    assert cpu[-4:] == [3.0, None, None, 4.0]


def test_services_are_capped_and_forgotten() -> None:
    series = Series(max_services=3)
    for name in "abcde":
        series.request(seen(name, T0, 0.01))
    assert sorted(series.snapshot(T0)["services"]) == ["a", "b", "c"]
    assert series.dropped == 2
    series.forget({"a"})
    series.request(seen("d", T0, 0.01))
    assert sorted(series.snapshot(T0)["services"]) == ["a", "d"]
