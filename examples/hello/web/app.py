"""A tiny web front end that calls the API through the URL devenv hands it ($API_URL)."""

import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = os.environ["API_URL"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path == "/healthz":
            body = b"ok"
        else:
            with urllib.request.urlopen(f"{API}/greet", timeout=5) as resp:
                message = json.load(resp)["message"]
            body = f"<!doctype html><h1>{message}</h1><p>served by web via {API}</p>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        if self.path != "/healthz":
            print(f"web {self.command} {self.path}", flush=True)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print(f"web listening on {server.server_port}", flush=True)
    server.serve_forever()
