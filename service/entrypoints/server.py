"""Runs the worker and/or the HTTP endpoints in one process.

``Service`` is the running process as an object: the CLI runs it until SIGINT/SIGTERM,
tests start and stop it in their own event loop.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from contextlib import AsyncExitStack, suppress
from types import TracebackType
from typing import Any

import structlog
import uvicorn

from service.bootstrap import Container, build_container
from service.entrypoints.http.admin import build_admin_app
from service.entrypoints.http.app import build_http_app
from service.entrypoints.http.channels import ChannelsConfig, load_texts
from service.entrypoints.http.security import Authenticator, parse_tokens
from service.settings import Settings

log = structlog.get_logger(__name__)


def _listen(host: str, port: int) -> socket.socket:
    """Bind here rather than in uvicorn: a taken port raises ``OSError`` to the caller,
    where uvicorn would call ``sys.exit`` inside a task and bring the event loop down.

    The protocol must be ``IPPROTO_TCP`` (``socket.create_server`` leaves it 0): asyncio sets
    ``TCP_NODELAY`` only on connections accepted from such a socket, and without it every
    response written in two parts waits for the client's delayed acknowledgement.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except BaseException:
        listener.close()
        raise
    return listener


class Service:
    """The process: its container, and its HTTP servers.

    The admin server (``OPTOUT_ADMIN_HOST:OPTOUT_ADMIN_PORT``: health, readiness, metrics,
    the API's documents) always runs; the public one (``OPTOUT_HTTP_HOST:OPTOUT_HTTP_PORT``:
    ``/v1``, pages, SMS webhook) with ``public`` (``optout api`` and ``optout run``; a worker
    alone serves no public route).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        with_worker: bool,
        channels_by_default: bool = False,
        public: bool = True,
    ) -> None:
        self.settings = settings
        self.with_worker = with_worker
        self.channels_by_default = channels_by_default
        self.public = public
        self._stack = AsyncExitStack()
        self._servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
        self._stop_requested = False
        self.container: Container | None = None
        # The ports actually bound, by server ("http", "admin"): a port of 0 in the settings
        # lets the system choose a free one.
        self.ports: dict[str, int] = {}

    async def __aenter__(self) -> Service:
        settings = self.settings
        # The ports are bound first: a taken port fails the start before anything connects,
        # and none of the process's own connections can take a port meant for a server.
        listeners: dict[str, socket.socket] = {}
        try:
            if self.public:
                listeners["http"] = _listen(settings.http_host, settings.http_port)
            listeners["admin"] = _listen(settings.admin_host, settings.admin_port)
            self.ports = {name: int(sock.getsockname()[1]) for name, sock in listeners.items()}
            self.container = container = await build_container(
                settings,
                self._stack,
                with_worker=self.with_worker,
                channels_by_default=self.channels_by_default,
            )
            openapi = None
            if self.public:
                auth = Authenticator(parse_tokens(settings.api_tokens.get_secret_value()))
                if not len(auth):
                    log.warning(
                        "api_no_tokens", detail="OPTOUT_API_TOKENS is empty: /v1 answers 401"
                    )
                app = build_http_app(
                    container.decisions,
                    auth,
                    max_body_bytes=settings.http_max_body_bytes,
                    channels=self._channels(container),
                    history=container.history,
                    command_receipts=container.receipts,
                    throttle=container.throttle,
                )
                openapi = app.openapi
                await self._start_server(app, listeners.pop("http"))
            admin = build_admin_app(
                container.readiness,
                liveness=container.liveness,
                metrics_registry=container.metrics.registry,
                openapi=openapi,
            )
            await self._start_server(admin, listeners.pop("admin"))
        except BaseException:
            for listener in listeners.values():
                listener.close()
            await self._stop_http()
            await self._stack.aclose()
            raise
        log.info(
            "service_started",
            worker=self.with_worker,
            http=f"http://{settings.http_host}:{self.ports['http']}" if self.public else None,
            admin=f"http://{settings.admin_host}:{self.ports['admin']}",
        )
        return self

    async def _start_server(self, app: Any, listener: socket.socket) -> None:
        host, port = listener.getsockname()[:2]
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
        )
        server = uvicorn.Server(config)
        server.should_exit = self._stop_requested
        # serve() closes the listener when it stops.
        task = asyncio.create_task(server.serve(sockets=[listener]))
        self._servers.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)

    def _channels(self, container: Container) -> ChannelsConfig | None:
        if container.channels is None:
            return None
        settings = self.settings
        if container.channels.signer is None:
            log.warning("links_no_keys", detail="OPTOUT_LINK_KEYS is empty: link pages answer 400")
        return ChannelsConfig(
            intake=container.channels.intake,
            sms=container.channels.sms,
            decisions=container.decisions,
            signer=container.channels.signer,
            public_base_url=settings.public_base_url,
            support_contact=settings.support_contact,
            sms_auth_token=settings.sms_auth_token.get_secret_value().encode(),
            sms_default_region=settings.sms_default_region,
            page_outcome_wait_seconds=settings.page_outcome_wait_seconds,
            texts=load_texts(),
            links=container.channels.links,
            throttle=container.throttle,
        )

    async def wait(self) -> None:
        """Until a server stops (a stop was requested, or one failed); then the others."""
        tasks = [task for _, task in self._servers]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        self.request_stop()
        for task in tasks:
            await task

    def request_stop(self) -> None:
        self._stop_requested = True
        for server, _ in self._servers:
            server.should_exit = True

    async def _stop_http(self) -> None:
        self.request_stop()
        for _, task in self._servers:
            if not task.done():
                with suppress(Exception):
                    await task

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        log.info("service_stopping")
        self.request_stop()
        try:
            for _, task in self._servers:
                await task
        finally:
            await self._stack.aclose()
        log.info("service_stopped")


async def serve(
    settings: Settings,
    *,
    with_worker: bool,
    channels_by_default: bool = False,
    public: bool = True,
) -> None:
    """Run until SIGINT or SIGTERM, then stop consuming, finish the batch and close.

    The handlers are installed before uvicorn starts: ``uvicorn.Server.serve`` replaces them
    while it runs and, once stopped, restores them and re-raises the signal it caught. The
    restored handler is then ours (stop, already requested) rather than the default one,
    which would kill the process before the worker's exit stack unwinds.
    """
    loop = asyncio.get_running_loop()
    service = Service(
        settings,
        with_worker=with_worker,
        channels_by_default=channels_by_default,
        public=public,
    )
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, service.request_stop)
    try:
        async with service:
            await service.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
