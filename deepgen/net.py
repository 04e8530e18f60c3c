"""Network reachability: one quick TCP check before a download or a remote reward judge is used, so an
unreachable host fails within seconds with its name instead of hanging or failing every request later."""

from __future__ import annotations

import socket
import urllib.request
from urllib.parse import urlsplit

from .errors import ResourceError

__all__ = ["CONNECT_TIMEOUT", "tcp_probe"]

CONNECT_TIMEOUT = 5.0  # seconds a host gets to accept a connection


def _connect_target(url: str) -> tuple[str, int, str]:
    """``(host, port, via)`` of a TCP connection to ``url``: its host, or the proxy ``urllib`` would use for it
    (``via`` is then ``" through the proxy <proxy>"``, else ``""``)."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    host, port, via = parts.hostname, parts.port, ""
    if not host:
        raise ValueError(f"no host in {url!r}")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        pp = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if pp.hostname:
            host, port, via = pp.hostname, pp.port or 80, f" through the proxy {proxy}"
    return host, port, via


def tcp_probe(url: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Open (and close) one TCP connection to ``url``'s host, or to the proxy ``urllib`` would use for it.

    Raises :class:`ResourceError` ``"<host>[ through the proxy <proxy>]: <reason>"`` (refused, no answer
    within ``timeout`` s, unknown host, no host in the URL); callers put it in their own sentence.
    """
    try:
        host, port, via = _connect_target(url)
    except ValueError as e:
        raise ResourceError(str(e)) from None
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = (e.strerror or str(e) or type(e).__name__).strip()
        if isinstance(e, socket.timeout) or "timed out" in reason:
            reason = f"no answer within {timeout:g} s"
        raise ResourceError(f"{urlsplit(url).netloc or url}{via}: {reason}") from None
