"""Effect receipts over HTTP: when each sender had a command's opt-out in effect.

The handler only translates: the command id and tenant in, ``CommandReceipts`` out. It needs
the `history` scope: a receipt is evidence for the same audit as the consent history, and
the `check` tokens every sender holds have no need to read other senders' standing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from service.application.receipts import CommandReceipts
from service.entrypoints.http.errors import ApiError, error_responses
from service.entrypoints.http.models import TENANT_HELP, Tenant
from service.entrypoints.http.security import Caller, requires


class SenderReceiptOut(BaseModel):
    sender: str
    status: Literal["in_effect", "in_effect_unmeasured", "not_yet"] = Field(
        description="`in_effect`: every live instance applied it, the slowest after"
        " `effect_ms`; `in_effect_unmeasured`: applied, but an instance started after it or"
        " its time was not seen; `not_yet`: an instance has not applied it."
    )
    effect_ms: float | None = Field(description="From the event's effective_at to applied.")
    behind_records: int = Field(description="With `not_yet`: events the slowest instance lacks.")
    instances: int = Field(description="The sender's instances that reported recently.")
    summary: str


class ReceiptOut(BaseModel):
    command_id: str
    tenant: str
    partition: int = Field(description="The event's partition of the preferences topic.")
    offset: int = Field(description="The event's offset there.")
    effective_at: datetime
    senders: list[SenderReceiptOut]


class ReceiptQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: Tenant | None = Field(default=None, description=TENANT_HELP)


async def _receipts(request: Request) -> CommandReceipts:
    found: Any = request.app.state.receipts
    assert isinstance(found, CommandReceipts)
    return found


Receipts = Annotated[CommandReceipts, Depends(_receipts)]

router = APIRouter(
    prefix="/v1",
    dependencies=[requires("history")],
    responses=error_responses(401, 403, 404, 422, 429, 503),
)


def _summary(sender: str, status: str, effect_ms: float | None, behind: int) -> str:
    if status == "in_effect":
        return f"in effect at {sender} after {effect_ms:.0f} ms"
    if status == "in_effect_unmeasured":
        return f"in effect at {sender} (time not measured)"
    return f"not yet in effect at {sender} ({behind} records behind)"


@router.get(
    "/commands/{command_id}/receipt",
    operation_id="getReceipt",
    summary="Effect receipt: when each sender had the command's opt-out in effect",
    response_model=ReceiptOut,
)
async def receipt(
    command_id: Annotated[str, Path(min_length=1, max_length=128)],
    query: Annotated[ReceiptQuery, Query()],
    service: Receipts,
    caller: Caller,
) -> ReceiptOut:
    tenant = caller.tenant_for(query.tenant)
    found = await service.receipt(tenant, command_id)
    if found is None:
        raise ApiError(
            404,
            "unknown_receipt",
            f"no effect receipt for this command in tenant {tenant!r}: it made no opt-out event,"
            " its receipt expired (OPTOUT_RECEIPT_TTL_SECONDS), or it is not applied yet",
        )
    return ReceiptOut(
        command_id=found.command_id,
        tenant=found.tenant,
        partition=found.partition,
        offset=found.offset,
        effective_at=datetime.fromtimestamp(found.effective_at, UTC),
        senders=[
            SenderReceiptOut(
                sender=a.sender,
                status=a.status,
                effect_ms=a.effect_ms,
                behind_records=a.behind_records,
                instances=a.instances,
                summary=_summary(a.sender, a.status, a.effect_ms, a.behind_records),
            )
            for a in found.senders
        ],
    )
