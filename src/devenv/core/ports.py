"""Who holds a local TCP port: for error messages that say what to stop."""

from __future__ import annotations

import contextlib


def port_owner(port: int) -> str:
    """' by pid N (name)' for the process listening on `port`, or '' when it cannot be read."""
    with contextlib.suppress(Exception):
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN" and conn.pid:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    return ""
