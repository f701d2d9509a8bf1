"""The applied report an SDK instance publishes on the sender-receipts topic.

Keyed by the sender's name, so one sender's reports stay in order on one partition. It names
no subject and no command: positions on the preferences topic and a time, nothing else.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from service.domain.receipts import AppliedReport, Reporter

_NAME = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class AppliedPositionV1(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    partition: int = Field(ge=0, le=100_000)
    applied_offset: int = Field(ge=0, description="The next offset to apply: all below it are.")


class SenderReportV1(BaseModel):
    """Published every 100-250 ms while the SDK applies events, every few seconds when idle."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sender: _NAME
    instance: _NAME
    applied_at_ms: int = Field(ge=0, description="The sender's wall clock, ms since the epoch.")
    positions: list[AppliedPositionV1] = Field(max_length=10_000)

    def to_domain(self) -> AppliedReport:
        return AppliedReport(
            Reporter(self.sender, self.instance),
            self.applied_at_ms / 1000,
            {p.partition: p.applied_offset for p in self.positions},
        )
