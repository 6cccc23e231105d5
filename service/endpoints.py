"""The endpoint policy for stream jobs: which interfaces and ports a job may make its worker bind.

``tcp://HOST:PORT`` with HOST one of the ``stream_hosts`` setting (exactly as written there: list
``0.0.0.0`` or ``*`` to allow every interface) and PORT a number in ``stream_port_min``..``stream_port_max``
(a ``*`` port is refused: the policy's range is what a firewall opens).
"""

from __future__ import annotations

import re

from service.settings import Settings

_ENDPOINT = re.compile(r"^tcp://(?P<host>\[[^\]]*\]|[^:/\s]+):(?P<port>\*|\d{1,10})$")


def endpoint_problem(endpoint: str, settings: Settings) -> str | None:
    """Why the policy refuses ``endpoint``, or None."""
    match = _ENDPOINT.match(endpoint)
    if match is None:
        return "not tcp://HOST:PORT"
    host, port = match["host"], match["port"]
    if host.lower() not in {h.lower() for h in settings.stream_hosts}:
        return f"host {host} is not allowed (stream_hosts: {', '.join(settings.stream_hosts)})"
    low, high = settings.stream_port_min, settings.stream_port_max
    if not port.isdigit() or not low <= int(port) <= high:
        return f"port {port} is outside the allowed range {low}-{high}"
    return None
