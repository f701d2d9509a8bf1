"""Command intake for channels without a Kafka client: HTTP, the unsubscribe pages, SMS.

Every channel ends as a contract-v1 command on the commands topic, checked first by exactly
the worker's own checks (``decode_command``, then the domain's ``validate``), so HTTP refuses
what the worker would reject, names the field and the reason, and publishes nothing then.

Waiting for the outcome: the expectation is registered with the outcome follower *before*
the command is published, so an outcome that arrives fast can never be missed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from service.contract.decode import DeadLetter, decode_command
from service.contract.v1 import CommandV1
from service.domain.catalog import Catalog
from service.domain.commands import Command, Delivery, Malformed
from service.domain.events import Outcome
from service.domain.validation import validate

_INTAKE = Delivery("http-intake", 0, 0)

PAGES_ACTOR = "optout-pages"
SMS_ACTOR = "sms-inbound"
SERVICE_APPS = frozenset({PAGES_ACTOR, SMS_ACTOR, "optout-republish"})
"""`source.app` values that name the service's own channels: a client may not claim them."""


def names_service_channel(name: str) -> bool:
    """An app or actor name the service keeps for its own channels (imports included)."""
    return name in SERVICE_APPS or name == "kafka" or name.startswith("import:")


_CHANGE_INDEX = re.compile(r"^changes\[(\d+)\]")


class CommandSink(Protocol):
    """Publishes command records (key, value) and returns once Kafka acknowledged them all."""

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> None: ...


class OutcomeWatch(Protocol):
    """Outcomes as they are published; ``expect`` must be called before the command is sent."""

    def expect(self, tenant: str, command_id: str) -> asyncio.Future[Outcome]: ...

    def forget(self, tenant: str, command_id: str) -> None: ...


class IntakeRefused(ValueError):
    """A command the worker would refuse: ``error`` is its reason code, ``field`` the input."""

    def __init__(self, error: str, detail: str, field: str | None) -> None:
        super().__init__(detail)
        self.error, self.detail, self.field = error, detail, field

    def within(self, prefix: str) -> IntakeRefused:
        field = prefix if self.field is None else f"{prefix}.{self.field}"
        return IntakeRefused(self.error, self.detail, field)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A published command and, if it arrived in time, its outcome."""

    command: Command
    outcome: Outcome | None


class CommandIntake:
    def __init__(
        self,
        catalog: Catalog,
        sink: CommandSink,
        outcomes: OutcomeWatch,
        *,
        max_record_bytes: int,
        max_future: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.catalog = catalog
        self._sink = sink
        self._outcomes = outcomes
        self._max_record_bytes = max_record_bytes
        self._max_future = max_future
        self._clock = clock

    def check(self, document: Mapping[str, Any]) -> tuple[Command, bytes]:
        """The command a document states and its record value; ``IntakeRefused`` otherwise."""
        try:
            value = orjson.dumps(document)
        except (TypeError, orjson.JSONEncodeError):
            raise IntakeRefused("invalid_payload", "not a JSON object", None) from None
        decoded = decode_command(value, _INTAKE, max_bytes=self._max_record_bytes)
        if isinstance(decoded, DeadLetter):
            field = "command_id" if decoded.code == "no_command_id" else None
            raise IntakeRefused("invalid_payload", decoded.error, field)
        if isinstance(decoded, Malformed):
            raise _schema_refusal(document, decoded.detail)
        command = decoded.command
        problem = validate(self.catalog, command, now=self._clock(), max_future=self._max_future)
        if problem is not None:
            reason, detail = problem
            raise IntakeRefused(reason, detail, _field_of(reason, detail))
        return command, value

    async def submit(
        self,
        documents: Sequence[Mapping[str, Any]],
        *,
        actor: str,
        wait_seconds: float = 0.0,
        service_channel: bool = False,
    ) -> list[Accepted]:
        """Check every command, publish all of them or none, then wait for their outcomes.

        ``actor`` (the credential or channel carrying them) is stamped on every command; a
        document that states one itself is refused. Unless the caller is one of the service's
        own channels (``service_channel``), a ``source.app`` naming one is refused too, so
        proof of consent cannot be forged through the API. With several commands the
        refusal's field is prefixed ``commands[i]``.
        """
        checked: list[tuple[Command, bytes]] = []
        for index, document in enumerate(documents):
            try:
                _check_provenance(document, service_channel=service_channel)
                checked.append(self.check({**document, "actor": actor}))
            except IntakeRefused as refused:
                if len(documents) > 1:
                    raise refused.within(f"commands[{index}]") from None
                raise
        expected: list[asyncio.Future[Outcome]] = []
        if wait_seconds > 0:
            expected = [self._outcomes.expect(c.tenant, c.command_id) for c, _ in checked]
        try:
            await self._sink.publish([(c.subject_id.encode(), value) for c, value in checked])
            outcomes = await self._gather(expected, wait_seconds)
        finally:
            for command, _ in checked if expected else ():
                self._outcomes.forget(command.tenant, command.command_id)
        if not outcomes:
            return [Accepted(c, None) for c, _ in checked]
        return [Accepted(c, o) for (c, _), o in zip(checked, outcomes, strict=True)]

    @staticmethod
    async def _gather(
        expected: list[asyncio.Future[Outcome]], wait_seconds: float
    ) -> list[Outcome | None]:
        if not expected:
            return []
        deadline = time.monotonic() + wait_seconds
        # shield: the futures are shared with any other request waiting for the same id.
        await asyncio.wait(
            [asyncio.shield(f) for f in expected], timeout=max(0.0, deadline - time.monotonic())
        )
        return [f.result() if f.done() and not f.cancelled() else None for f in expected]


def _check_provenance(document: Mapping[str, Any], *, service_channel: bool) -> None:
    if "actor" in document:
        raise IntakeRefused(
            "invalid_payload", "set by the service from the credential, never by a client", "actor"
        )
    source = document.get("source")
    app = source.get("app") if isinstance(source, Mapping) else None
    if not service_channel and isinstance(app, str) and names_service_channel(app):
        raise IntakeRefused(
            "invalid_payload", f"{app!r} names one of the service's own channels", "source.app"
        )


def _schema_refusal(document: Mapping[str, Any], summary: str) -> IntakeRefused:
    """The first schema error, with its location as a field path (``changes[0].topic``)."""
    try:
        CommandV1.__pydantic_validator__.validate_python(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        first = errors[0]
        field = ""
        for part in first["loc"]:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        what = (
            first["msg"].removeprefix("Value error, ")
            if first["type"] == "value_error"
            else first["msg"]
        )
        return IntakeRefused("invalid_payload", what, field or None)
    return IntakeRefused("invalid_payload", summary, None)


def _field_of(reason: str, detail: str) -> str | None:
    """The input a domain refusal is about, from its reason and the index in its detail."""
    if reason == "future_timestamp":
        return "occurred_at"
    found = _CHANGE_INDEX.match(detail)
    if found is not None:
        names = {"unknown_topic": "topic", "mandatory_topic": "topic", "invalid_payload": "action"}
        name = names.get(reason, "channel")
        return f"changes[{found.group(1)}].{name}"
    if "source channel" in detail:
        return "source.channel"
    if "occurred_at" in detail:
        return "occurred_at"
    return "changes" if "change" in detail else None
