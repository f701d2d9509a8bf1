"""The admin surface of a public app built in a unit test: its OpenAPI document is served
there, never on the public app itself."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from service.application.health import Readiness
from service.entrypoints.http.admin import build_admin_app


async def admin_get(public: FastAPI, path: str) -> httpx.Response:
    admin = build_admin_app(Readiness(), openapi=public.openapi)
    transport = httpx.ASGITransport(app=admin)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        return await client.get(path)


async def openapi_of(public: FastAPI) -> dict[str, Any]:
    response = await admin_get(public, "/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document
