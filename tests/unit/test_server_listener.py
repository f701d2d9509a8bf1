"""The socket the service serves HTTP on."""

from __future__ import annotations

import socket

from service.entrypoints.server import _listen


def test_the_listener_is_tcp_so_asyncio_disables_nagle_on_its_connections() -> None:
    for host in ("127.0.0.1", "localhost"):
        listener = _listen(host, 0)
        try:
            assert listener.proto == socket.IPPROTO_TCP
            client = socket.create_connection(listener.getsockname()[:2])
            accepted, _ = listener.accept()
            with client, accepted:
                assert accepted.proto == socket.IPPROTO_TCP
        finally:
            listener.close()
