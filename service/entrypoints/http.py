"""HTTP endpoints: liveness, readiness, and the decision API.

Handlers only translate: HTTP in, a ``DecisionService`` call, JSON out. Errors are answered
with the same ``ErrorOut`` body everywhere, and a 422 names the offending field.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.application.decisions import DecisionService, Question
from service.application.health import Liveness, Readiness
from service.domain.catalog import CatalogLookupError, UnknownTopic
from service.domain.model import SubjectKey
from service.entrypoints.api_models import (
    CheckBatchIn,
    CheckBatchOut,
    CheckIn,
    DecisionOut,
    ErrorOut,
    PreferencesOut,
    SubjectIn,
)
from service.entrypoints.auth import Authenticator
from service.entrypoints.openapi import openapi_document

log = structlog.get_logger(__name__)


class _SubjectConvertor(Convertor[str]):
    """Subject ids are opaque: slashes, newlines, anything. ``path`` stops at newlines."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("subject", _SubjectConvertor())

M = TypeVar("M", bound=BaseModel)

_UNAVAILABLE = (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class _Invalid(Exception):
    def __init__(self, error: str, detail: str, field: str | None) -> None:
        super().__init__(detail)
        self.error, self.detail, self.field = error, detail, field


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(model.model_dump_json(), status, headers=headers, media_type="application/json")


def error_response(status: int, error: str, detail: str, headers: dict[str, str]) -> Response:
    return _json(ErrorOut(error=error, detail=detail), status, headers)


def _field(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _invalid(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> _Invalid:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = (*prefix, *first["loc"])
    return _Invalid("invalid_request", first["msg"], _field(loc) or None)


def _catalog_error(exc: CatalogLookupError, prefix: str = "") -> _Invalid:
    name = "topic" if isinstance(exc, UnknownTopic) else "channel"
    return _Invalid(f"unknown_{name}", str(exc), f"{prefix}{name}")


def _query(request: Request, allowed: frozenset[str]) -> dict[str, str]:
    """The query parameters, refusing unknown ones: a misspelt `tenant` would otherwise
    silently answer for the default tenant."""
    for name in request.query_params:
        if name not in allowed:
            raise _Invalid("invalid_request", "unknown query parameter", name)
    return dict(request.query_params)


_PREFERENCES_QUERY = frozenset({"tenant"})
_CHECK_QUERY = frozenset({"tenant", "topic", "channel"})


def _parse(model: type[M], raw: dict[str, Any]) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None


Handler = Callable[[Request], Awaitable[Response]]


def _translating(handler: Handler) -> Handler:
    """Map input errors to 422 and unreachable dependencies to 503, in one place."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except _Invalid as exc:
            return _json(ErrorOut(error=exc.error, detail=exc.detail, field=exc.field), 422)
        except _UNAVAILABLE as exc:
            log.warning("api_dependency_unavailable", error=type(exc).__name__)
            return error_response(503, "unavailable", "a dependency did not answer", {})

    return endpoint


def build_http_app(
    readiness: Readiness,
    decisions: DecisionService | None = None,
    auth: Authenticator | None = None,
    liveness: Liveness | None = None,
) -> Starlette:
    """Health endpoints always; the decision API when a ``DecisionService`` is given."""

    async def healthz(_: Request) -> JSONResponse:
        if liveness is not None and not liveness.alive:
            return JSONResponse({"status": "failing", "reason": liveness.failure}, 503)
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> JSONResponse:
        reasons = await readiness.check()
        failing = {name: why for name, why in reasons.items() if why is not None}
        status = 503 if failing else 200
        return JSONResponse(
            {"status": "not ready" if failing else "ready", "checks": reasons}, status_code=status
        )

    routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if decisions is None:
        return Starlette(routes=routes)
    service = decisions
    guard = auth or Authenticator([])
    document = orjson.dumps(openapi_document(service.catalog))

    async def openapi(_: Request) -> Response:
        return Response(document, media_type="application/json")

    async def preferences(request: Request) -> Response:
        raw = {"subject_id": request.path_params["subject_id"]}
        q = _parse(SubjectIn, raw | _query(request, _PREFERENCES_QUERY))
        prefs = await service.preferences(SubjectKey(q.tenant, q.subject_id))
        return _json(PreferencesOut.of(prefs))

    async def check(request: Request) -> Response:
        raw = {"subject_id": request.path_params["subject_id"]}
        q = _parse(CheckIn, raw | _query(request, _CHECK_QUERY))
        try:
            service.validate(q.topic, q.channel)
        except CatalogLookupError as exc:
            raise _catalog_error(exc) from None
        question = Question(q.subject_id, q.topic, q.channel, q.tenant)
        decision = await service.is_allowed(question.key, q.topic, q.channel)
        return _json(DecisionOut.of(q.subject_id, q.tenant, decision))

    async def check_batch(request: Request) -> Response:
        try:
            batch = CheckBatchIn.model_validate_json(await request.body())
        except ValidationError as exc:
            raise _invalid(exc) from None
        for index, item in enumerate(batch.checks):
            try:
                service.validate(item.topic, item.channel)
            except CatalogLookupError as exc:
                raise _catalog_error(exc, f"checks[{index}].") from None
        questions = [Question(c.subject_id, c.topic, c.channel, c.tenant) for c in batch.checks]
        decisions_ = await service.check_many(questions)
        return _json(
            CheckBatchOut(
                results=[
                    DecisionOut.of(q.subject_id, q.tenant, d)
                    for q, d in zip(questions, decisions_, strict=True)
                ]
            )
        )

    def read(handler: Handler) -> Handler:
        return guard.protect("read", _translating(handler), error_response)

    routes += [
        Route("/openapi.json", openapi),
        Route(
            "/v1/subjects/{subject_id:subject}/preferences",
            read(preferences),
            methods=["GET"],
            name="preferences",
        ),
        Route(
            "/v1/subjects/{subject_id:subject}/check", read(check), methods=["GET"], name="check"
        ),
        Route("/v1/check", read(check_batch), methods=["POST"], name="check_batch"),
    ]
    return Starlette(routes=routes)
