"""One error body for every failure: ``{"error", "detail", "field"}``.

Clients branch on ``error`` and show ``detail``; a 422 names the offending input in
``field``, as the batch index path (``checks[3].channel``) where there is one. Framework
errors (validation, unknown route or method, oversized body) and unexpected ones are
translated here too, so no answer has FastAPI's own ``{"detail": ...}`` shape or plain text.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisClusterException, RedisError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service.application.decisions import ForwardChainTooLong, IdentifierKeyMissing
from service.domain.catalog import CatalogLookupError, InvalidChannel, UnknownTopic
from service.domain.identifiers import InvalidIdentifier, normalize
from service.entrypoints.http.models import ErrorOut

log = structlog.get_logger(__name__)

# What PostgreSQL and Redis raise when they do not answer; the caller may retry later.
# Redis Cluster's client raises its own family when no node answers for a slot.
UNAVAILABLE: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


class ApiError(Exception):
    """An answer other than 200, raised from handlers and dependencies alike."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.field, self.headers = field, headers


def error_response(
    status: int,
    error: str,
    detail: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = ErrorOut(error=error, detail=detail, field=field).model_dump_json()
    return Response(body, status, headers=headers, media_type="application/json")


def body_too_large(limit: int) -> Response:
    # No `Connection: close`: closing with the body unread resets the connection, and the
    # client, still sending, would never read this answer. The server discards the rest.
    detail = f"the request body is larger than {limit} bytes"
    return error_response(413, "too_large", detail)


def unknown_name(exc: CatalogLookupError, prefix: str = "") -> ApiError:
    if isinstance(exc, InvalidChannel):
        return ApiError(422, "invalid_channel", str(exc), f"{prefix}channel")
    name = "topic" if isinstance(exc, UnknownTopic) else "channel"
    return ApiError(422, f"unknown_{name}", str(exc), f"{prefix}{name}")


def normalized(subject_id: str, field: str) -> str:
    """The subject id as the service stores it (identifiers have one spelling); 422 naming
    ``field`` for an identifier that cannot be one."""
    try:
        return normalize(subject_id)
    except InvalidIdentifier as exc:
        raise ApiError(422, "invalid_identifier", str(exc), field) from None


def field_path(loc: tuple[int | str, ...]) -> str | None:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, for the OpenAPI document."""
    descriptions = {
        401: "No valid bearer token.",
        403: "The token lacks the scope the operation lists (`scope_forbidden`), or does not act"
        " for the tenant asked (`tenant_forbidden`).",
        404: "No subject has this id (`unknown_subject`).",
        413: "The request body is larger than `OPTOUT_HTTP_MAX_BODY_BYTES`.",
        422: "Invalid input; `field` names it.",
        429: "Past a rate limit (`rate_limited`); `Retry-After` says when to try again.",
        503: "Redis or PostgreSQL did not answer, or `OPTOUT_IDENTIFIER_KEY` is missing to"
        " recognise an erased identifier (`identifier_key_missing`).",
    }
    return {s: {"model": ErrorOut, "description": descriptions[s]} for s in statuses}


def _not_json() -> Response:
    return error_response(422, "invalid_request", "the body is not valid JSON")


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.error, exc.detail, exc.field, exc.headers)


async def _invalid_request(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # An unknown parameter is reported first: it usually explains the other errors.
    first = min(errors, key=lambda e: e.get("type") != "extra_forbidden")
    loc = tuple(first.get("loc", ()))
    where = loc[1:] if loc and loc[0] in _LOCATIONS else loc
    if first.get("type") == "json_invalid":
        return _not_json()
    detail = str(first.get("msg", "invalid input"))
    if first.get("type") == "extra_forbidden" and loc[:1] == ("query",):
        detail = "unknown query parameter"
    return error_response(422, "invalid_request", detail, field_path(where))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 413:
        return body_too_large(request.app.state.max_body_bytes)
    if status == 400:
        # FastAPI's answer to a body it cannot even decode (invalid UTF-8, say): for the
        # client that is one more body that is not JSON.
        return _not_json()
    error = HTTPStatus(status).phrase.lower().replace(" ", "_")  # not_found, ...
    headers = None if exc.headers is None else dict(exc.headers)
    return error_response(status, error, str(exc.detail), headers=headers)


async def _unavailable(_: Request, exc: Exception) -> Response:
    log.warning("api_dependency_unavailable", error=type(exc).__name__)
    return error_response(503, "unavailable", "a dependency did not answer")


async def _identifier_key_missing(_: Request, exc: Exception) -> Response:
    log.error("api_identifier_key_missing")
    return error_response(503, "identifier_key_missing", str(exc))


async def _forward_chain_too_long(_: Request, exc: Exception) -> Response:
    log.error("api_forward_chain_too_long")
    return error_response(500, "forward_chain_too_long", str(exc))


async def _internal(_: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer, so the server still logs the traceback.
    return error_response(500, "internal_error", "the request could not be answered")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _internal)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(IdentifierKeyMissing, _identifier_key_missing)
    app.add_exception_handler(ForwardChainTooLong, _forward_chain_too_long)
    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, _unavailable)
