"""Ports for servers the suite starts."""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now, never one this process handed out before: the system may offer the
    same free port twice, and two servers told to listen on it would collide. A server that
    can choose its own port (``OPTOUT_ADMIN_PORT=0``, read back from ``Service.ports``) is
    safer still: a port found free here can be taken before the server binds it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
