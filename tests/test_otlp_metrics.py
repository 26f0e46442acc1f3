"""OTLP metrics end to end: a service using the official OpenTelemetry SDK (MeterProvider,
OTLP/HTTP exporter) with no configuration but what devenv injects shows up on the engine's
Prometheus /metrics with `service` and `instance` labels, and `promtool` accepts it."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import urllib.error
import urllib.request

import pytest

from conftest import Project, free_ports, procs_in, wait_for

# no endpoint, name, token or interval in the code: all from the OTEL_* variables
METERED = textwrap.dedent("""\
    import os
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from opentelemetry import metrics
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    metrics.set_meter_provider(MeterProvider(
        metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]))
    meter = metrics.get_meter("test")
    orders = meter.create_counter("shop.orders", unit="{order}", description="Orders placed.")
    took = meter.create_histogram("shop.checkout.duration", unit="s",
                                  description="Checkout time.")
    orders.add(3, {"kind": "book", "service": "theirs"})
    took.record(0.2, {"kind": "book"})
    took.record(7.0, {"kind": "book"})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
""")


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_services_otlp_metrics_are_on_the_engines_metrics_and_promtool_accepts_them(
        project: Project) -> None:
    (project.root / "metered.py").write_text(METERED)
    port = free_ports(1)[0]
    project.services(f"""\
        shop:
          command: [python, metered.py]
          port: {port}
          env: {{OTEL_METRIC_EXPORT_INTERVAL: "500"}}
    """)
    project.up()
    url: str = project.status()["metrics"]["url"]

    def exposition() -> str | None:
        status, text = project.get(url)
        assert status == 200 and isinstance(text, str)
        return text if "shop_checkout_duration_seconds_bucket{" in text else None

    text = wait_for(exposition, timeout=15)
    assert text, f"the service's OTLP metrics never appeared on {url}"
    assert ('shop_orders_total{exported_service="theirs",instance="shop-1",kind="book",'
            'service="shop"} 3.0') in text
    assert "# TYPE shop_checkout_duration_seconds histogram" in text
    labels = 'instance="shop-1",kind="book",service="shop"'
    assert f'shop_checkout_duration_seconds_count{{{labels}}} 2.0' in text
    assert f'shop_checkout_duration_seconds_sum{{{labels}}} 7.2' in text
    bucket = 'shop_checkout_duration_seconds_bucket{instance="shop-1",kind="book",le="%s",'
    for bound, count in (("0.0", 0.0), ("5.0", 1.0), ("10.0", 2.0), ("+Inf", 2.0)):
        assert f'{bucket % bound}service="shop"}} {count}' in text  # the SDK's default bounds

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make tools installs Debian's prometheus)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr

    # the receiver wants the token, and counts what it refuses
    env = next(p for p in procs_in(project.root) if "metered.py" in p.cmdline()).environ()
    endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"] + "/v1/metrics"
    token = env["OTEL_EXPORTER_OTLP_HEADERS"].split("=", 1)[1].replace("%20", " ")
    proto = {"Content-Type": "application/x-protobuf"}
    assert post(endpoint, b"", proto) == 401
    assert post(endpoint, b"\x0a\x05\xff\xff", {**proto, "Authorization": token}) == 400
    _, text = project.get(url)
    assert "devenv_telemetry_otlp_rejected_total 2.0" in text
