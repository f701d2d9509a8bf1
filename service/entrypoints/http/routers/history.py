"""Proof of consent over HTTP: a subject's consent history, a page at a time, JSON or CSV.

The handler only translates: the subject id and the query in, a ``ConsentHistory`` page
out, rendered by ``history_export`` exactly as the CLI renders it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from service.application.history import (
    DEFAULT_PAGE,
    MAX_PAGE,
    ConsentHistory,
    HistoryCursor,
    InvalidCursor,
    UnknownSubject,
)
from service.domain.identifiers import InvalidIdentifier
from service.entrypoints.history_export import HistoryOut, to_csv
from service.entrypoints.http.errors import ApiError, error_responses
from service.entrypoints.http.models import TENANT_HELP, Tenant

# Registers the `subject` path convertor (opaque ids: slashes, newlines) before the route
# below is compiled.
from service.entrypoints.http.routers import decisions as _decisions  # noqa: F401
from service.entrypoints.http.security import Caller, requires

CSV_MEDIA_TYPE = "text/csv; charset=utf-8"


class HistoryQuery(BaseModel):
    # A misspelt `tenant` would otherwise silently export the default tenant's subject.
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: Tenant | None = Field(default=None, description=TENANT_HELP)
    format: Literal["json", "csv"] = Field(
        default="json", description="`csv`: one row per entry, erased cells say `erased`."
    )
    limit: int = Field(default=DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="Entries per page.")
    cursor: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="`next_cursor` of the previous page (or the `Link` header's, for CSV).",
    )


async def _history(request: Request) -> ConsentHistory:
    found: Any = request.app.state.history
    assert isinstance(found, ConsentHistory)
    return found


History = Annotated[ConsentHistory, Depends(_history)]
SubjectIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=256,
        description="A subject id or an identifier (`email:…`, `phone:…`, `device:…`).",
    ),
]

router = APIRouter(
    prefix="/v1",
    dependencies=[requires("history")],
    responses=error_responses(401, 403, 404, 422, 429, 503),
)

_NEXT_PAGE = {
    "Link": {
        "description": 'The next page, `<URL>; rel="next"`; absent on the last page.',
        "schema": {"type": "string"},
    }
}


@router.get(
    "/subjects/{subject_id:subject}/history",
    operation_id="getHistory",
    summary="Proof of consent: every recorded change of the subject, oldest first",
    response_description="A page of the subject's consent history.",
    response_model=HistoryOut,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "headers": _NEXT_PAGE,
        }
    },
)
async def history(
    subject_id: SubjectIdPath,
    query: Annotated[HistoryQuery, Query()],
    request: Request,
    service: History,
    caller: Caller,
) -> Response:
    tenant = caller.tenant_for(query.tenant)
    try:
        after = None if query.cursor is None else HistoryCursor.parse(query.cursor)
    except InvalidCursor as exc:
        raise ApiError(422, "invalid_cursor", str(exc), "cursor") from None
    try:
        page = await service.page(tenant, subject_id, after, query.limit)
    except InvalidIdentifier as exc:
        raise ApiError(422, "invalid_identifier", str(exc), "subject_id") from None
    except UnknownSubject:
        raise ApiError(
            404, "unknown_subject", f"no subject has this id in tenant {tenant!r}"
        ) from None
    headers = {}
    if page.next is not None:
        # A query-only reference: it resolves against the URL the client used (behind any
        # proxy prefix), and the subject id, which may hold anything, is not repeated.
        params = {**request.query_params, "cursor": page.next.token()}
        headers["Link"] = f'<?{urlencode(params)}>; rel="next"'
    if query.format == "csv":
        return Response(to_csv(page.records), headers=headers, media_type=CSV_MEDIA_TYPE)
    body = HistoryOut.of([page]).model_dump_json()
    return Response(body, headers=headers, media_type="application/json")
