"""The local ingress: one HTTP entry point on 127.0.0.1 routing to services' pools.

It answers only local host names (`localhost`, `*.localhost`, `127.0.0.1`, `[::1]`) and the
hosts services declare, so that a web page elsewhere cannot reach the services through a
name it points at 127.0.0.1 (DNS rebinding). It routes by host (`<service>.localhost`, or a
declared host) and then by path prefix, longest first, matching whole decoded segments and
forwarding the raw (still encoded) rest. Data services (PostgreSQL, Redis) speak no HTTP and
get no route. Bodies stream both ways, websockets pass through with the subprotocol the
backend chose, and while a service has no ready instance (a restart) a request waits up to
the hold timeout instead of failing.

It is asyncio protocols, not a web framework: a request's head is parsed by llhttp
(`httptools`), the head sent on is built once in bytes, bodies are forwarded as they come
with flow control both ways, and instances are reached over kept-alive connections
(`upstream.py`). The modules: `routes.py` (hosts, paths, the route table: pure),
`messages.py` (the heads it writes, body framing, its own answers: pure), `edge.py` (edge
spans), `upstream.py` (connections to instances), `server.py` (connections from clients,
`Ingress`); they run compiled (mypyc) when a build matches them (`devenv/native.py`).

A request is replayed on another instance only when the one it was sent to never received it
(the connection was refused); one that was sent and met a closed connection gets 502 at once.
Only an idempotent request without a streamed body goes on a kept-alive connection; when that
connection turns out closed with no answer (the instance closed it as it sat idle), it is
sent once more on a new one (RFC 9112 §9.3.1.1). Every other request goes on a new
connection, closed after it, so that one closed with no answer means that the instance
received the request. Request bodies up to REPLAY_LIMIT (with a Content-Length) are read
before a connection is chosen, so a refused connection can be retried; bigger or chunked
ones are streamed.

Every request gets an edge span (service `devenv-ingress`, kind server) when the ingress has a
telemetry hub: it continues the W3C `traceparent` the client sent (its `tracestate` passes
through) or starts a new trace, and the request sent to the instance carries a new
`traceparent` whose parent is the edge span, so an instrumented service's own span is its
child. When the response is complete the ingress publishes one `RequestSeen` (what metrics and
the dashboard count); the trace store makes the edge span from it, off the hot path. A
websocket is one span, from the upgrade to the close.

Every wait is bounded: for an instance (the hold timeout), for a connection (CONNECT_TIMEOUT),
for the response's headers (RESPONSE_TIMEOUT, then 504); a response that is flowing is never
cut. A connection must send its request's headers within HEADER_TIMEOUT of being accepted, an
idle keep-alive connection is closed after IDLE_TIMEOUT, and past `max_connections` (a quarter
of the descriptor limit) the oldest connections that are not in a request make room, so that
slow or idle clients by the thousand cannot take the descriptors the engine's control socket,
its health probes and its services need.
"""

from devenv.engine.ingress.edge import CLIENT_GONE, Edge
from devenv.engine.ingress.messages import (
    HOP_BY_HOP,
    Framing,
    IngressError,
    end_to_end,
    framing,
    request_head,
    response_head,
    span_error,
)
from devenv.engine.ingress.routes import (
    LOCAL_HOSTS,
    NoHttp,
    RouteSpec,
    RouteTable,
    Target,
    build_routes,
    host_name,
    is_local,
    prefix_segments,
    split_path,
)
from devenv.engine.ingress.server import (
    ATTEMPTS,
    BODY_TIMEOUT,
    CONNECT_TIMEOUT,
    HEADER_TIMEOUT,
    IDEMPOTENT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MIN_CONNECTIONS,
    REPLAY_LIMIT,
    RESPONSE_TIMEOUT,
    Ingress,
    default_max_connections,
)

__all__ = [
    "ATTEMPTS", "BODY_TIMEOUT", "CLIENT_GONE", "CONNECT_TIMEOUT", "HEADER_TIMEOUT",
    "HOP_BY_HOP", "IDEMPOTENT", "IDLE_TIMEOUT", "LOCAL_HOSTS", "MAX_CONNECTIONS",
    "MIN_CONNECTIONS", "REPLAY_LIMIT", "RESPONSE_TIMEOUT", "Edge", "Framing", "Ingress",
    "IngressError", "NoHttp", "RouteSpec", "RouteTable", "Target", "build_routes",
    "default_max_connections", "end_to_end", "framing", "host_name", "is_local",
    "prefix_segments", "request_head", "response_head", "span_error", "split_path",
]
