"""The decision API: "may I send this?", one at a time, in a batch, or a subject's whole page.

Handlers only translate: validated input in, a ``DecisionService`` call, a body out. Catalog
names are checked here, before any I/O, so a typo costs no round trip and its 422 names the
field, with the batch index when there is one. Subject ids are normalised here too
(``identifiers.normalize``: `email:Alice@Example.com` is `email:alice@example.com`), and the
answers name the subject as normalised.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.convertors import Convertor, register_url_convertor

from service.application.decisions import DecisionService, Question
from service.domain.catalog import CatalogLookupError
from service.domain.model import SubjectKey
from service.entrypoints.http.errors import error_responses, normalized, unknown_name
from service.entrypoints.http.models import (
    MAX_BATCH,
    CheckBatchIn,
    CheckBatchOut,
    CheckQuery,
    DecisionOut,
    PreferencesOut,
    PreferencesQuery,
)
from service.entrypoints.http.security import Caller, requires


class _SubjectConvertor(Convertor[str]):
    """Subject ids are opaque: slashes, newlines, anything. ``path`` stops at newlines."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("subject", _SubjectConvertor())


async def _decisions(request: Request) -> DecisionService:
    found: Any = request.app.state.decisions
    assert isinstance(found, DecisionService)
    return found


Decisions = Annotated[DecisionService, Depends(_decisions)]
SubjectIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=256,
        description="Id of the person; `email:`, `phone:` and `device:` ids are normalised.",
    ),
]

router = APIRouter(
    prefix="/v1",
    dependencies=[requires("check")],
    responses=error_responses(401, 403, 422, 429, 503),
)


@router.get(
    "/subjects/{subject_id:subject}/preferences",
    operation_id="getPreferences",
    summary="Rules and the effective decision for every topic and channel",
    response_description="Unknown subjects get defaults.",
)
async def preferences(
    subject_id: SubjectIdPath,
    query: Annotated[PreferencesQuery, Query()],
    service: Decisions,
    caller: Caller,
) -> PreferencesOut:
    tenant = caller.tenant_for(query.tenant)
    subject_id = normalized(subject_id, "subject_id")
    prefs = await service.preferences(SubjectKey(tenant, subject_id))
    return PreferencesOut.of(prefs)


@router.get(
    "/subjects/{subject_id:subject}/check",
    operation_id="check",
    summary="May this topic be sent to the subject on this channel?",
    response_description="The decision.",
)
async def check(
    subject_id: SubjectIdPath,
    query: Annotated[CheckQuery, Query()],
    service: Decisions,
    caller: Caller,
) -> DecisionOut:
    tenant = caller.tenant_for(query.tenant)
    try:
        service.validate(query.topic, query.channel)
    except CatalogLookupError as exc:
        raise unknown_name(exc) from None
    subject_id = normalized(subject_id, "subject_id")
    question = Question(subject_id, query.topic, query.channel, tenant)
    decision = await service.is_allowed(question.key, query.topic, query.channel)
    return DecisionOut.of(subject_id, tenant, decision)


@router.post(
    "/check",
    operation_id="checkBatch",
    summary=f"Many decisions in one call (up to {MAX_BATCH:,})",
    response_description="One result per check, in order.",
    responses=error_responses(413),
)
async def check_batch(batch: CheckBatchIn, service: Decisions, caller: Caller) -> CheckBatchOut:
    questions: list[Question] = []
    for index, item in enumerate(batch.checks):
        tenant = caller.tenant_for(item.tenant, field=f"checks[{index}].tenant")
        try:
            service.validate(item.topic, item.channel)
        except CatalogLookupError as exc:
            raise unknown_name(exc, f"checks[{index}].") from None
        subject_id = normalized(item.subject_id, f"checks[{index}].subject_id")
        questions.append(Question(subject_id, item.topic, item.channel, tenant))
    decisions = await service.check_many(questions)
    return CheckBatchOut(
        results=[
            DecisionOut.of(q.subject_id, q.tenant, d)
            for q, d in zip(questions, decisions, strict=True)
        ]
    )
