"""The public app's factory: which routers it serves, its limits, errors and OpenAPI document.

Dependencies reach the routers through ``app.state`` (decisions, authenticator, channels),
so the routers are plain module-level objects and a test can build an app around fakes.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from starlette.middleware import Middleware

from service.application.decisions import DecisionService
from service.application.history import ConsentHistory
from service.application.rate_limits import Throttle
from service.application.receipts import CommandReceipts
from service.domain.catalog import Catalog
from service.domain.model import WILDCARD
from service.entrypoints.http.channels import ChannelsConfig
from service.entrypoints.http.errors import install_error_handlers
from service.entrypoints.http.limits import BodyLimit
from service.entrypoints.http.models import CATALOG_ENUM
from service.entrypoints.http.rate_limit import rate_limited
from service.entrypoints.http.routers import decisions as decisions_router
from service.entrypoints.http.routers import history as history_router
from service.entrypoints.http.routers import intake, pages, receipts, sms
from service.entrypoints.http.security import Authenticator

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def build_http_app(
    decisions: DecisionService,
    auth: Authenticator | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    channels: ChannelsConfig | None = None,
    history: ConsentHistory | None = None,
    throttle: Throttle | None = None,
    command_receipts: CommandReceipts | None = None,
) -> FastAPI:
    """The public surface: the decision API, with the proof-of-consent export when
    ``history`` is given, effect receipts when ``command_receipts`` is, and the channels
    (intake, pages, SMS webhook) when ``channels`` is.

    Health, readiness, metrics and the OpenAPI document are on the admin surface
    (``admin.build_admin_app``, fed this app's ``openapi``), never here. Without tokens
    every ``/v1`` call answers 401: an API left unconfigured stays closed.
    With ``throttle``, ``/v1`` and the SMS webhook are rate-limited by one dependency that
    runs before every route's own (``rate_limit.py``); the pages limit themselves.
    """
    app = FastAPI(
        title="optout decision API",
        version="1",
        description="May this message be sent? Every answer carries its reason.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        middleware=[Middleware(BodyLimit, max_body_bytes=max_body_bytes)],
        dependencies=[Depends(rate_limited)],
    )
    app.state.throttle = throttle
    app.state.max_body_bytes = max_body_bytes
    install_error_handlers(app)
    app.state.decisions = decisions
    app.state.authenticator = auth or Authenticator([])
    app.include_router(decisions_router.router)
    if history is not None:
        app.state.history = history
        app.include_router(history_router.router)
    if command_receipts is not None:
        app.state.receipts = command_receipts
        app.include_router(receipts.router)
    if channels is not None:
        app.state.channels = channels
        app.include_router(intake.router)
        app.include_router(pages.router)
        app.include_router(sms.router)
    # Generated once, here: the admin surface serves the cached document from then on.
    _enumerate_catalog(app.openapi(), decisions.catalog)
    return app


def _enumerate_catalog(node: Any, catalog: Catalog) -> None:
    """Replace every catalog marker with the names this deployment accepts."""
    if isinstance(node, dict):
        kind = node.pop(CATALOG_ENUM, None)
        if kind == "topics":
            node["enum"] = sorted(catalog.topics)
        elif kind == "channels":
            node["enum"] = [*sorted(catalog.channels), WILDCARD]
        for value in node.values():
            _enumerate_catalog(value, catalog)
    elif isinstance(node, list):
        for value in node:
            _enumerate_catalog(value, catalog)
