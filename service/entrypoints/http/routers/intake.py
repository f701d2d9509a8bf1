"""Command intake and link making over HTTP, for apps without a Kafka client.

Preference commands and links need the `write` scope, identity commands (link, unlink,
merge, erase) the `identity` scope, and every command acts for a tenant of the token: one
it names, or the token's only tenant when it names none. The token's name is the actor of
every command it submits.

The body is read as raw JSON and checked by the worker's own decoding and validation
(``CommandIntake.check``), not by a model of its own: HTTP must refuse exactly what the
worker would, and a second model would drift. Nothing is published unless every command of
the request passes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.application.intake import Accepted, IntakeRefused
from service.application.page_links import LinksNotConfigured
from service.contract.v1 import OutcomeV1
from service.domain.catalog import (
    CatalogLookupError,
    InvalidChannel,
    UnknownChannel,
    UnknownTopic,
    link_problem,
)
from service.domain.link_tokens import LinkClaim, LinkTokenError
from service.entrypoints.http.channels import Channels, now_seconds
from service.entrypoints.http.errors import ApiError, error_responses
from service.entrypoints.http.security import ApiToken, Caller, requires

MAX_COMMANDS = 500
MAX_WAIT_SECONDS = 10.0

router = APIRouter(prefix="/v1", tags=["channels"], responses=error_responses(401, 403, 422, 429))


def _answer(accepted: Accepted) -> dict[str, Any]:
    outcome = accepted.outcome
    return {
        "command_id": accepted.command.command_id,
        "tenant": accepted.command.tenant,
        "outcome": None
        if outcome is None
        else OutcomeV1.from_domain(outcome).model_dump(mode="json"),
    }


@router.post(
    "/commands",
    operation_id="submitCommands",
    summary=f'Publish a contract-v1 command, or {{"commands": [...]}} (up to {MAX_COMMANDS})',
    description="Scope `write` for preference commands, `identity` for link, unlink, merge"
    " and erase. A command without `tenant` acts for the token's only tenant.",
    dependencies=[requires()],
    status_code=202,
    responses={
        200: {"description": "Published, and every outcome arrived within `wait`."},
        202: {"description": "Published; outcomes not (all) arrived."},
        **error_responses(413, 503),
    },
)
async def submit_commands(
    request: Request,
    channels: Channels,
    caller: Caller,
    wait: Annotated[
        float, Query(ge=0, le=MAX_WAIT_SECONDS, description="Seconds to wait for the outcome.")
    ] = 0.0,
) -> JSONResponse:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise ApiError(422, "invalid_request", "the body is not valid JSON") from None
    batch = isinstance(body, dict) and "commands" in body and "command_id" not in body
    documents = body.get("commands") if batch else [body]
    if (
        not isinstance(documents, list)
        or not documents
        or not all(isinstance(d, dict) for d in documents)
    ):
        raise ApiError(
            422,
            "invalid_request",
            "a command object, or commands: a list of them",
            "commands" if batch else None,
        )
    if len(documents) > MAX_COMMANDS:
        raise ApiError(422, "invalid_request", f"at most {MAX_COMMANDS} commands", "commands")
    documents = [
        _authorised(document, caller, f"commands[{index}]." if batch else "")
        for index, document in enumerate(documents)
    ]
    try:
        accepted = await channels.intake.submit(documents, actor=caller.name, wait_seconds=wait)
    except IntakeRefused as refused:
        raise ApiError(422, refused.error, refused.detail, refused.field) from None
    complete = wait > 0 and all(a.outcome is not None for a in accepted)
    status = 200 if complete else 202
    if batch:
        return JSONResponse({"results": [_answer(a) for a in accepted]}, status_code=status)
    return JSONResponse(_answer(accepted[0]), status_code=status)


def _authorised(document: dict[str, Any], caller: ApiToken, prefix: str) -> dict[str, Any]:
    """The document acting for a tenant the token holds, with the scope its kind needs."""
    kind = document.get("kind", "preferences")
    caller.require("write" if kind == "preferences" else "identity")
    named = document.get("tenant")
    if named is not None and not isinstance(named, str):
        raise ApiError(422, "invalid_payload", "a tenant name", f"{prefix}tenant")
    return {**document, "tenant": caller.tenant_for(named, field=f"{prefix}tenant")}


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    subject_id: str = Field(min_length=1, max_length=256)
    topic: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The topic the link stops (required for `unsubscribe`).",
    )
    channel: str = Field(default="email", min_length=1, max_length=64)
    tenant: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_-]{1,64}$",
        description="Omitted: the token's only tenant.",
    )
    purpose: Literal["unsubscribe", "preferences"] = Field(
        default="unsubscribe",
        description="`unsubscribe`: the one-click link of a mail (`/u`), which stops its "
        "topic on its channel and shows the preference page read-only. `preferences`: a "
        "preference-page link (`/p`) that may also opt in, valid for "
        "`OPTOUT_PREFERENCES_LINK_VALIDITY_SECONDS`; send it only to the person, on request.",
    )


class LinkOut(BaseModel):
    url: str
    purpose: Literal["unsubscribe", "preferences"] = "unsubscribe"
    token_id: str = Field(description="What `POST /v1/links/revoke` takes to revoke the link.")
    list_unsubscribe: str | None = Field(
        description="The `List-Unsubscribe` header value (null for a preference link)."
    )
    list_unsubscribe_post: str | None = Field(
        description="The `List-Unsubscribe-Post` header value (null for a preference link)."
    )


@router.post(
    "/links",
    operation_id="makeLink",
    summary="A signed one-click unsubscribe link and its mail headers, or a preference link",
    dependencies=[requires("write")],
    responses=error_responses(503),
)
async def make_link(body: LinkIn, channels: Channels, caller: Caller) -> LinkOut:
    tenant = caller.tenant_for(body.tenant)
    if body.purpose == "preferences":
        claim = LinkClaim(tenant, body.subject_id, "*", "*", now_seconds(), purpose="preferences")
        url = channels.make_preferences_link(claim)
        return LinkOut(
            url=url,
            purpose="preferences",
            token_id=claim.token_id,
            list_unsubscribe=None,
            list_unsubscribe_post=None,
        )
    if body.topic is None:
        raise ApiError(422, "invalid_request", "an unsubscribe link names its topic", "topic")
    try:
        link_problem(channels.intake.catalog, body.topic, body.channel)
    except CatalogLookupError as exc:
        name = "channel" if isinstance(exc, (UnknownChannel, InvalidChannel)) else "topic"
        error = {UnknownTopic: "unknown_topic", UnknownChannel: "unknown_channel"}.get(
            type(exc), f"invalid_{name}"
        )
        raise ApiError(422, error, str(exc), name) from None
    claim = LinkClaim(tenant, body.subject_id, body.topic, body.channel, now_seconds())
    link = channels.make_link(claim)
    return LinkOut(
        url=link.url,
        token_id=claim.token_id,
        list_unsubscribe=link.list_unsubscribe,
        list_unsubscribe_post=link.list_unsubscribe_post,
    )


class RevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    link: str = Field(
        min_length=1,
        max_length=2048,
        description="The link's URL, its token, or its `token_id`.",
    )


class RevokeOut(BaseModel):
    token_id: str
    newly_revoked: bool = Field(description="false: it was revoked already.")


@router.post(
    "/links/revoke",
    operation_id="revokeLink",
    summary="Revoke one link: from now on it opens nothing (a deny list by token id)",
    description="Scope `admin`, with a token of every tenant (`*`).",
    responses=error_responses(503),
)
async def revoke_link(
    body: RevokeIn,
    channels: Channels,
    token: Annotated[ApiToken, requires("admin")],
) -> RevokeOut:
    # A token id names no tenant: only an operator of every tenant may revoke by it.
    if token.tenants is not None:
        raise ApiError(403, "tenant_forbidden", "revoking a link needs a token of every tenant")
    try:
        token_id, new = await channels.page_links().revoke(
            body.link, revoked_by=f"api:{token.name}"
        )
    except LinksNotConfigured:
        raise ApiError(
            503, "links_not_configured", "no OPTOUT_LINK_KEYS are configured", None
        ) from None
    except LinkTokenError as exc:
        raise ApiError(
            422, "invalid_link", f"not a link of this service ({exc.kind})", "link"
        ) from None
    return RevokeOut(token_id=token_id, newly_revoked=new)
