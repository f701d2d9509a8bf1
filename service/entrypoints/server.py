"""Runs the worker and/or the HTTP endpoints in one process.

``Service`` is the running process as an object: the CLI runs it until SIGINT/SIGTERM,
tests start and stop it in their own event loop.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from types import TracebackType

import structlog
import uvicorn

from service.bootstrap import Container, build_container
from service.entrypoints.auth import Authenticator, parse_tokens
from service.entrypoints.http import build_http_app
from service.settings import Settings

log = structlog.get_logger(__name__)


class Service:
    def __init__(self, settings: Settings, *, with_worker: bool) -> None:
        self.settings = settings
        self.with_worker = with_worker
        self._stack = AsyncExitStack()
        self._server: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.container: Container | None = None

    async def __aenter__(self) -> Service:
        try:
            self.container = await build_container(
                self.settings, self._stack, with_worker=self.with_worker
            )
            auth = Authenticator(parse_tokens(self.settings.api_tokens.get_secret_value()))
            if not len(auth):
                log.warning("api_no_tokens", detail="OPTOUT_API_TOKENS is empty: /v1 answers 401")
            config = uvicorn.Config(
                build_http_app(
                    self.container.readiness,
                    self.container.decisions,
                    auth,
                    liveness=self.container.liveness,
                ),
                host=self.settings.http_host,
                port=self.settings.http_port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
            config.load()
            self._server = uvicorn.Server(config)
            # What Server.serve() does, minus its signal capture: the owner decides on signals.
            self._server.lifespan = config.lifespan_class(config)
            await self._server.startup()
            self._http_task = asyncio.create_task(self._server.main_loop())
        except BaseException:
            await self._stack.aclose()
            raise
        log.info(
            "service_started",
            worker=self.with_worker,
            http=f"http://{self.settings.http_host}:{self.settings.http_port}",
        )
        return self

    async def wait(self) -> None:
        assert self._http_task is not None
        await self._http_task

    def request_stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        log.info("service_stopping")
        self.request_stop()
        if self._http_task is not None:
            await self._http_task
        if self._server is not None:
            await self._server.shutdown()
        await self._stack.aclose()
        log.info("service_stopped")


async def serve(settings: Settings, *, with_worker: bool) -> None:
    """Run until SIGINT or SIGTERM, then stop consuming, finish the batch and close."""
    import signal

    loop = asyncio.get_running_loop()
    async with Service(settings, with_worker=with_worker) as service:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.request_stop)
        await service.wait()
