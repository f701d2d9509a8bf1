"""Liveness, readiness and metrics, for the orchestrator and Prometheus: on the admin port only
(``admin.py``), no token, and not in the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from service.application.health import Liveness, Readiness

router = APIRouter(include_in_schema=False)


async def _readiness(request: Request) -> Readiness:
    found: Any = request.app.state.readiness
    assert isinstance(found, Readiness)
    return found


async def _liveness(request: Request) -> Liveness:
    found: Any = request.app.state.liveness
    assert isinstance(found, Liveness)
    return found


@router.get("/healthz")
async def healthz(liveness: Annotated[Liveness, Depends(_liveness)]) -> JSONResponse:
    """503 only when the process cannot recover by itself, so the orchestrator restarts it."""
    if not liveness.alive:
        return JSONResponse({"status": "failing", "reason": liveness.failure}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(readiness: Annotated[Readiness, Depends(_readiness)]) -> JSONResponse:
    """503 with the failing checks' reasons, so on-call sees which dependency is down."""
    reasons = await readiness.check()
    failing = any(why is not None for why in reasons.values())
    return JSONResponse(
        {"status": "not ready" if failing else "ready", "checks": reasons},
        status_code=503 if failing else 200,
    )


@router.get("/metrics")
async def metrics(
    request: Request, readiness: Annotated[Readiness, Depends(_readiness)]
) -> Response:
    """The Prometheus exposition; readiness is checked first, so `optout_ready` and
    `optout_dependency_up` are as of this scrape."""
    registry: CollectorRegistry | None = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        return Response(status_code=404)
    await readiness.check()
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
