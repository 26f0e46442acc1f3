"""A background worker: no port; polls the API every few seconds."""

import json
import os
import time
import urllib.request

API = os.environ["API_URL"]
while True:
    try:
        with urllib.request.urlopen(f"{API}/greet", timeout=5) as resp:
            print("worker saw", json.load(resp)["message"], flush=True)
    except OSError as exc:
        print("worker: api not reachable:", exc, flush=True)
    time.sleep(5)
