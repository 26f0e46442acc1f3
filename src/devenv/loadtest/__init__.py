"""`devenv load-test`: a fast HTTP/1.1 load generator, a client of the services.

`pattern.py` (the pattern file: model and validation), `units.py` (durations, rates),
`data.py` (data sources, templates, extraction), `schedule.py` (open-model arrival times),
`histogram.py` (log-bucketed latency histogram), `http.py` (the keep-alive client and its
response parser), `worker.py` (one process's event loop), `generator.py` (the worker
processes, merged), `results.py` (figures and thresholds), `report.py` (the HTML page).
"""
