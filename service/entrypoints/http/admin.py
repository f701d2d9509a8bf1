"""The admin surface: health, readiness, metrics and the API's documents, on a port of its own.

`OPTOUT_ADMIN_HOST:OPTOUT_ADMIN_PORT` is for the orchestrator, Prometheus and operators; the
public port (`OPTOUT_HTTP_PORT`) serves `/v1`, the pages and the SMS webhook only. Nothing
here needs a token: keep the admin port off the public network (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware

from service.application.health import Liveness, Readiness
from service.entrypoints.asyncapi import asyncapi_document
from service.entrypoints.http.errors import install_error_handlers
from service.entrypoints.http.limits import BodyLimit
from service.entrypoints.http.routers import health

ADMIN_MAX_BODY_BYTES = 1_024


@cache
def _asyncapi() -> bytes:
    return asyncapi_document().encode()


def build_admin_app(
    readiness: Readiness,
    *,
    liveness: Liveness | None = None,
    metrics_registry: CollectorRegistry | None = None,
    openapi: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """`/healthz`, `/readyz`, `/metrics`; with `openapi` (the public app's document), the
    documents of the API: `/openapi.json` and `/asyncapi.json` (contract v1 on Kafka).

    No HTML viewer is served: one loads its scripts from a CDN, which an admin port should
    not depend on; any OpenAPI viewer opens the document.
    """
    app = FastAPI(
        title="optout admin",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # Only GETs here: a body is never needed, so none is read past a few bytes.
        middleware=[Middleware(BodyLimit, max_body_bytes=ADMIN_MAX_BODY_BYTES)],
    )
    install_error_handlers(app)
    app.state.readiness = readiness
    app.state.liveness = liveness or Liveness()
    app.state.metrics_registry = metrics_registry
    app.include_router(health.router)
    if openapi is not None:
        document = openapi

        @app.get("/openapi.json", include_in_schema=False)
        async def openapi_json() -> JSONResponse:
            return JSONResponse(document())

        @app.get("/asyncapi.json", include_in_schema=False)
        async def asyncapi_json() -> Response:
            return Response(_asyncapi(), media_type="application/json")

    return app
