"""Telemetry: what the running system tells about itself (traces, requests, metrics).

`model.py` holds the values that cross modules (a Span, a RequestSeen) and the Hub that fans
them out: the OTLP receiver and the ingress publish into it; the trace store, the metrics
and the dashboard subscribe. Nothing here imports the engine or the CLI.
"""
