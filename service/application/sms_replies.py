"""SMS replies as commands: which tenants a number serves, and what STOP, START and YES do.

- STOP (and its variants) opts the sender out of every topic on `sms` in each tenant the
  number it was sent to serves. A STOP to a number outside a configured mapping is applied
  in every tenant of the mapping and logged as a warning: a stop is never lost.
- START and UNSTOP `restore`: they undo the STOP, nothing more (``domain/sms_restore``).
  Sent to a number outside the mapping, they are refused: nothing is written.
- YES is a START only in the tenants that configure it (``OPTOUT_SMS_YES_TENANTS``);
  elsewhere it is not understood, and nothing is written.

Every byte of a command derives from the provider's message id: the command id is
``sms:<id>`` and ``occurred_at`` is the time the id was first received (``ReceiptClock``),
so a replayed webhook publishes the very same command and the worker answers `duplicate`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog

from service.application.intake import SMS_ACTOR, CommandIntake, IntakeRefused
from service.domain.model import WILDCARD
from service.domain.sms_restore import KEYWORD_CHANNEL

log = structlog.get_logger(__name__)

SmsIntent = Literal["stop", "start", "yes"]
SmsAnswer = Literal["stopped", "started", "start_refused", "not_understood", "not_recorded"]
"""`start_refused`: a START to a number outside the mapping; `not_recorded`: the commands
were refused by the intake (a catalog without `sms`), so nothing was published."""

DEFAULT_TENANT = "default"
SOURCE_APP = "sms-inbound"
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_TENANT = re.compile(r"^[a-z0-9_-]{1,64}$")
MESSAGE_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")
"""Twilio's `MessageSid` (`SM` and 32 hex digits), bounded and plain enough for an id."""


class ReceiptClock(Protocol):
    async def first_seen(self, message_id: str, now: datetime) -> datetime:
        """When `message_id` was first received: `now` the first time, the same instant
        on every later call (for at least as long as processed commands are kept)."""
        ...


@dataclass(frozen=True, slots=True)
class SmsNumbers:
    """The tenants each inbound number serves (``OPTOUT_SMS_NUMBERS``); none configured:
    every number serves `default`."""

    tenants_by_number: Mapping[str, tuple[str, ...]]

    @classmethod
    def parse(cls, spec: str) -> SmsNumbers:
        """``+E164:TENANT[+TENANT...]`` entries joined by commas; one clear line on error."""
        found: dict[str, tuple[str, ...]] = {}
        for index, entry in enumerate(part.strip() for part in spec.split(",")):
            if not entry:
                continue
            where = f"OPTOUT_SMS_NUMBERS entry {index + 1}"
            number, sep, tenants = entry.partition(":")
            if not sep or not _E164.match(number):
                raise ValueError(f"{where}: expected +E164:TENANT[+TENANT...]")
            names = tuple(dict.fromkeys(tenants.split("+")))
            if not all(_TENANT.match(name) for name in names):
                raise ValueError(f"{where}: tenants are 1-64 of a-z 0-9 _ - joined by +")
            if number in found:
                raise ValueError(f"{where}: the number is listed twice")
            found[number] = names
        return cls(found)

    @property
    def all_tenants(self) -> tuple[str, ...]:
        if not self.tenants_by_number:
            return (DEFAULT_TENANT,)
        every = (name for names in self.tenants_by_number.values() for name in names)
        return tuple(sorted(set(every)))

    def tenants_of(self, number: str | None) -> tuple[str, ...] | None:
        """The tenants `number` serves, or None when a mapping is configured without it."""
        if not self.tenants_by_number:
            return (DEFAULT_TENANT,)
        if number is None:
            return None
        return self.tenants_by_number.get(number)


def parse_yes_tenants(spec: str) -> frozenset[str]:
    """``OPTOUT_SMS_YES_TENANTS``: the tenants whose programme takes YES for START."""
    names = frozenset(part.strip() for part in spec.split(",") if part.strip())
    if not all(_TENANT.match(name) for name in names):
        raise ValueError("OPTOUT_SMS_YES_TENANTS: tenants are 1-64 of a-z 0-9 _ - joined by ,")
    return names


class SmsReplies:
    def __init__(
        self,
        intake: CommandIntake,
        receipts: ReceiptClock,
        *,
        numbers: SmsNumbers,
        yes_tenants: frozenset[str],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._intake = intake
        self._receipts = receipts
        self._numbers = numbers
        self._yes_tenants = yes_tenants
        self._clock = clock

    def tenants_for(self, intent: SmsIntent, to: str | None) -> tuple[str, ...]:
        """Where the reply applies; empty when it applies nowhere (and writes nothing)."""
        served = self._numbers.tenants_of(to)
        if served is None:
            if intent != "stop":
                return ()
            log.warning(
                "sms_stop_to_unmapped_number",
                detail="applied in every tenant of OPTOUT_SMS_NUMBERS",
                tenants=len(self._numbers.all_tenants),
            )
            return self._numbers.all_tenants
        if intent == "yes":
            return tuple(name for name in served if name in self._yes_tenants)
        return served

    async def handle(
        self, intent: SmsIntent, *, sender: str, to: str | None, message_id: str
    ) -> SmsAnswer:
        """Publish the reply's commands (one per tenant) and say what to answer.

        `sender` and `to` are E.164 numbers (`to` None when unusable); `message_id` matches
        ``MESSAGE_ID``.
        """
        tenants = self.tenants_for(intent, to)
        if not tenants:
            if intent == "yes":
                return "not_understood"
            log.info("sms_start_refused", detail="sent to a number outside OPTOUT_SMS_NUMBERS")
            return "start_refused"
        received = await self._receipts.first_seen(message_id, self._clock())
        commands = [
            _command(intent, tenant, sender=sender, message_id=message_id, received=received)
            for tenant in tenants
        ]
        try:
            await self._intake.submit(commands, actor=SMS_ACTOR, service_channel=True)
        except IntakeRefused as refused:  # the catalog has no `sms` channel
            log.error("sms_command_refused", reason=refused.error)
            return "not_recorded"
        return "stopped" if intent == "stop" else "started"


def _command(
    intent: SmsIntent, tenant: str, *, sender: str, message_id: str, received: datetime
) -> dict[str, Any]:
    return {
        "command_id": f"sms:{message_id}",
        "tenant": tenant,
        "subject_id": f"phone:{sender}",
        "occurred_at": received.astimezone(UTC).isoformat(timespec="microseconds"),
        "source": {"channel": KEYWORD_CHANNEL, "app": SOURCE_APP},
        "changes": [
            {
                "action": "opt_out" if intent == "stop" else "restore",
                "topic": WILDCARD,
                "channel": KEYWORD_CHANNEL,
            }
        ],
        "reason": f"SMS reply ({intent})",
    }
