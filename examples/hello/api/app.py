"""A tiny JSON API: counts greetings. Listens on $PORT (given by devenv)."""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GREETING = os.environ.get("GREETING", "hello")
count = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        global count
        if self.path == "/healthz":
            return self._send(200, {"ok": True})
        count += 1
        replica = os.environ["DEVENV_REPLICA"]
        self._send(200, {"message": f"{GREETING} #{count}", "replica": replica})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        if self.path != "/healthz":
            print(f"api {self.command} {self.path}", flush=True)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print(f"api listening on {server.server_port}", flush=True)
    server.serve_forever()
