"""Liveness and readiness, for the orchestrator: no token, and not in the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from service.application.health import Readiness

router = APIRouter(include_in_schema=False)


async def _readiness(request: Request) -> Readiness:
    found: Any = request.app.state.readiness
    assert isinstance(found, Readiness)
    return found


@router.get("/healthz")
async def healthz() -> JSONResponse:
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
