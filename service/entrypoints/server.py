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

import structlog
import uvicorn

from service.bootstrap import Container, build_container
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
    def __init__(
        self, settings: Settings, *, with_worker: bool, channels_by_default: bool = False
    ) -> None:
        self.settings = settings
        self.with_worker = with_worker
        self.channels_by_default = channels_by_default
        self._stack = AsyncExitStack()
        self._server: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._stop_requested = False
        self.container: Container | None = None

    async def __aenter__(self) -> Service:
        try:
            self.container = await build_container(
                self.settings,
                self._stack,
                with_worker=self.with_worker,
                channels_by_default=self.channels_by_default,
            )
            auth = Authenticator(parse_tokens(self.settings.api_tokens.get_secret_value()))
            if not len(auth):
                log.warning("api_no_tokens", detail="OPTOUT_API_TOKENS is empty: /v1 answers 401")
            app = build_http_app(
                self.container.readiness,
                self.container.decisions,
                auth,
                max_body_bytes=self.settings.http_max_body_bytes,
                liveness=self.container.liveness,
                metrics_registry=self.container.metrics.registry,
                channels=self._channels(self.container),
                history=self.container.history,
                throttle=self.container.throttle,
            )
            config = uvicorn.Config(
                app,
                host=self.settings.http_host,
                port=self.settings.http_port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
            self._server = uvicorn.Server(config)
            self._server.should_exit = self._stop_requested
            listener = _listen(self.settings.http_host, self.settings.http_port)
            # serve() closes the listener when it stops.
            self._http_task = asyncio.create_task(self._server.serve(sockets=[listener]))
            await self._until_serving()
        except BaseException:
            await self._stop_http()
            await self._stack.aclose()
            raise
        log.info(
            "service_started",
            worker=self.with_worker,
            http=f"http://{self.settings.http_host}:{self.settings.http_port}",
        )
        return self

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

    async def _until_serving(self) -> None:
        assert self._server is not None
        assert self._http_task is not None
        while not self._server.started:
            if self._http_task.done():
                self._http_task.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)

    async def wait(self) -> None:
        assert self._http_task is not None
        await self._http_task

    def request_stop(self) -> None:
        self._stop_requested = True
        if self._server is not None:
            self._server.should_exit = True

    async def _stop_http(self) -> None:
        self.request_stop()
        if self._http_task is not None and not self._http_task.done():
            with suppress(Exception):
                await self._http_task

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        log.info("service_stopping")
        self.request_stop()
        try:
            if self._http_task is not None:
                await self._http_task
        finally:
            await self._stack.aclose()
        log.info("service_stopped")


async def serve(
    settings: Settings, *, with_worker: bool, channels_by_default: bool = False
) -> None:
    """Run until SIGINT or SIGTERM, then stop consuming, finish the batch and close.

    The handlers are installed before uvicorn starts: ``uvicorn.Server.serve`` replaces them
    while it runs and, once stopped, restores them and re-raises the signal it caught. The
    restored handler is then ours (stop, already requested) rather than the default one,
    which would kill the process before the worker's exit stack unwinds.
    """
    loop = asyncio.get_running_loop()
    service = Service(settings, with_worker=with_worker, channels_by_default=channels_by_default)
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, service.request_stop)
    try:
        async with service:
            await service.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
