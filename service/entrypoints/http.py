"""HTTP endpoints: liveness and readiness (the decision API joins them later)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.application.health import Readiness


def build_http_app(readiness: Readiness) -> Starlette:
    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> JSONResponse:
        reasons = await readiness.check()
        failing = {name: why for name, why in reasons.items() if why is not None}
        status = 503 if failing else 200
        return JSONResponse(
            {"status": "not ready" if failing else "ready", "checks": reasons}, status_code=status
        )

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz)])
