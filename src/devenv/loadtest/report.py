"""`--report FILE.html`: one self-contained page (inline SVG, no external assets) with
latency and throughput over time beside the services' CPU and memory."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TextIO

from devenv.loadtest.results import Results

COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563",
          "#ca8a04", "#db2777", "#65a30d"]


@dataclass(frozen=True)
class Sample:
    """The services' CPU (percent) and memory (bytes) at `t` seconds into the run."""

    t: float
    services: dict[str, tuple[float, int]]


def chart(title: str, unit: str, series: dict[str, list[tuple[float, float]]],
          width: int = 560, height: int = 200) -> str:
    """A line chart as inline SVG."""
    pad_l, pad_b, pad_t = 56, 24, 24
    points = [p for line in series.values() for p in line]
    if not points:
        return (f'<svg width="{width}" height="60"><text x="8" y="30">{html.escape(title)}: '
                "no data</text></svg>")
    x_max = max(max(x for x, _ in points), 1.0)
    y_max = max(max(y for _, y in points), 1e-9) * 1.1
    w, h = width - pad_l - 8, height - pad_b - pad_t

    def xy(x: float, y: float) -> str:
        return f"{pad_l + x / x_max * w:.1f},{pad_t + h - y / y_max * h:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{html.escape(title)}">',
             f'<text x="{pad_l}" y="16" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" '
             'stroke="#999"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#999"/>',
             f'<text x="{pad_l - 4}" y="{pad_t + 10}" text-anchor="end" font-size="11">'
             f'{y_max / 1.1:.4g}{html.escape(unit)}</text>',
             f'<text x="{pad_l - 4}" y="{pad_t + h}" text-anchor="end" font-size="11">0</text>',
             f'<text x="{pad_l + w}" y="{height - 6}" text-anchor="end" font-size="11">'
             f'{x_max:.0f}s</text>']
    for i, (name, line) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        if line:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                         f'points="{" ".join(xy(x, y) for x, y in line)}"/>')
        parts.append(f'<text x="{pad_l + 8 + 90 * i}" y="{height - 6}" font-size="11" '
                     f'fill="{color}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def page(results: Results, samples: list[Sample]) -> str:
    doc = results.as_json()
    timeline = doc["timeline"]
    latency = {p: [(float(r["t"]) + 1, float(r[p])) for r in timeline] for p in
               ("p50", "p95", "p99")}
    throughput = {"req/s": [(float(r["t"]) + 1, float(r["requests"])) for r in timeline],
                  "errors/s": [(float(r["t"]) + 1, float(r["errors"])) for r in timeline]}
    names = sorted({n for s in samples for n in s.services})
    cpu = {n: [(s.t, s.services[n][0]) for s in samples if n in s.services] for n in names}
    mem = {n: [(s.t, s.services[n][1] / 2**20) for s in samples if n in s.services]
           for n in names}
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['requests']}</td><td>{v['rps']}</td>"
        f"<td>{v['errors']['total']}</td>"
        + "".join(f"<td>{'-' if v['latency_ms'][p] is None else v['latency_ms'][p]}</td>"
                  for p in ("p50", "p90", "p95", "p99", "max"))
        + "</tr>" for k, v in [*doc["steps"].items(), ("all", doc)])
    verdicts = "".join(f"<li class={'ok' if v.ok else 'na' if v.why else 'bad'}>"
                       f"{html.escape(v.scope or 'all')}: {html.escape(v.threshold.text)} "
                       f"({html.escape(v.said)})</li>" for v in results.verdicts)
    behind = (f"<p class=bad>{html.escape(doc['generator']['behind'])}</p>"
              if doc["generator"]["behind"] else "")
    kinds = ", ".join(f"{k} {n}" for k, n in doc["errors"]["by_kind"].items() if n)
    kinds = f" ({kinds})" if kinds else ""
    lost = (" (stopped at once: the per-step figures were not handed in)"
            if doc["steps_lost"] else "")
    cut = doc["generator"]["cut_off"]
    lost += f"; {cut} in flight when it was stopped cut off (not counted)" if cut else ""
    resources = (chart("CPU by service", "%", cpu) + chart("Memory by service", " MiB", mem)
                 if samples else "<p>No CPU and memory figures: the target is not a service "
                 "of a running environment.</p>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>devenv load test: {html.escape(doc['target'])}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#111}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}
.ok{{color:#16a34a}}.bad{{color:#dc2626}}.na{{color:#ca8a04}}.charts{{display:flex;flex-wrap:wrap;gap:16px}}
</style></head><body>
<h1>Load test: {html.escape(doc['target'])}</h1>
<p>{html.escape(doc['asked'])} &mdash; {doc['requests']} requests in {doc['duration_s']}s,
{doc['rps']} req/s, {doc['errors']['total']} errors
{html.escape(kinds)}{' (interrupted)' if doc['interrupted'] else ''}{lost}</p>{behind}
<table><tr><th>step</th><th>requests</th><th>req/s</th><th>errors</th><th>p50 ms</th>
<th>p90 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th></tr>{rows}</table>
<ul>{verdicts}</ul>
<div class="charts">{chart("Latency", " ms", latency)}{chart("Throughput", "/s", throughput)}
{resources}</div>
</body></html>
"""


def write_report(file: TextIO, results: Results, samples: list[Sample]) -> None:
    """Into `file`, opened before the run (a bad path is refused before the load)."""
    file.write(page(results, samples))
