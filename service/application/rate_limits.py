"""Rate limits that never turn away an opt-out.

Page views, opt-ins, reads and anything that grows the consent history are counted per
client address, per link or API token and per subject, and refused past their limit (the
entrypoint answers 429 with ``Retry-After``). Opt-outs are counted too (so a flood that
alternates opt-ins and opt-outs stops at the limit) but never refused: one-click POSTs come
from a few shared mail-provider addresses and STOPs from the SMS provider's. The same
opt-out repeated within a short window is absorbed instead: answered, and not published
again (a marker per tenant, subject and set of cells; any opt-in of the subject clears all
of them, so an opt-out after an opt-in is always written).

The counters live in Redis (``adapters/redis_rate_limits.py``). When Redis does not answer,
requests are let through (counted as ``error``): a limit is a guard against abuse, not a
dependency that may take the service down, and it must never block an opt-out.
Subject ids never reach Redis in clear: they are keyed with HMAC-SHA256 under a key of the
service's own, separated from every other use of it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

log = structlog.get_logger(__name__)

Rule = Literal[
    "page_ip", "page_token", "subject_changes", "sms_ip", "sms_number", "api_token", "api_ip"
]
RULES: tuple[Rule, ...] = (
    "page_ip", "page_token", "subject_changes", "sms_ip", "sms_number", "api_token", "api_ip",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_seconds: int = 0


ALLOWED = Verdict(True)


class LimitStore(Protocol):
    async def hit(self, rule: Rule, key: str, cost: int = 1) -> Verdict:
        """Count ``cost`` under ``rule`` for ``key``; refused (and not counted) when that
        would pass the limit."""
        ...

    async def mark_once(self, group: str, marker: str, seconds: int) -> bool:
        """Set ``marker`` in ``group`` unless it is set (the group expires ``seconds`` after
        its last new marker); True when this call set it."""
        ...

    async def unmark(self, group: str) -> None:
        """Drop every marker of ``group``."""
        ...


class ThrottleTelemetry(Protocol):
    def limited(self, rule: str) -> None: ...

    def absorbed(self, channel: str) -> None: ...

    def limit_error(self) -> None: ...


class _NoTelemetry:
    def limited(self, rule: str) -> None:
        return None

    def absorbed(self, channel: str) -> None:
        return None

    def limit_error(self) -> None:
        return None


Cell = tuple[str, str]  # (topic, channel)


class Throttle:
    """``key``: the HMAC key that names subjects in Redis; ``repeat_window_seconds``: how
    long a repeated opt-out is absorbed."""

    def __init__(
        self,
        store: LimitStore,
        *,
        key: bytes,
        repeat_window_seconds: int,
        telemetry: ThrottleTelemetry | None = None,
        failures: tuple[type[Exception], ...] = (Exception,),
    ) -> None:
        if len(key) < 16:
            raise ValueError("the throttle's key must be at least 16 bytes")
        self._store = store
        self._key = key
        self._window = repeat_window_seconds
        self._telemetry = telemetry or _NoTelemetry()
        self._failures = failures

    def __repr__(self) -> str:
        return f"Throttle(repeat_window_seconds={self._window})"

    def subject(self, tenant: str, subject_id: str) -> str:
        """The name of a subject in Redis: keyed, never the id or a plain hash of it."""
        message = f"rate-limit\x00{tenant}\x00{subject_id}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    async def check(self, checks: Iterable[tuple[Rule, str]], *, cost: int = 1) -> Verdict:
        """Count the request under each (rule, key); the first refusal stops the rest."""
        for rule, key in checks:
            try:
                verdict = await self._store.hit(rule, key, cost)
            except self._failures as exc:
                self._failed(exc)
                return ALLOWED
            if not verdict.allowed:
                self._telemetry.limited(rule)
                return verdict
        return ALLOWED

    async def count(self, checks: Iterable[tuple[Rule, str]], *, cost: int = 1) -> None:
        """Count an opt-out under each (rule, key): it uses up the limit, it is never refused."""
        for rule, key in checks:
            try:
                await self._store.hit(rule, key, cost)
            except self._failures as exc:
                self._failed(exc)
                return

    async def first_opt_out(
        self, tenant: str, subject_id: str, cells: Sequence[Cell], *, channel: str
    ) -> bool:
        """False when the same opt-out was taken within the window (absorb it: answer, do
        not publish again); True otherwise, and the window starts now."""
        try:
            first = await self._store.mark_once(
                self.subject(tenant, subject_id), self._marker(cells), self._window
            )
        except self._failures as exc:
            self._failed(exc)
            return True
        if not first:
            self._telemetry.absorbed(channel)
        return first

    async def forget_opt_outs(self, tenant: str, subject_id: str) -> None:
        """An opt-in of the subject is about to be published, or an opt-out could not be:
        every later opt-out must be written, so the subject's markers go."""
        try:
            await self._store.unmark(self.subject(tenant, subject_id))
        except self._failures as exc:
            self._failed(exc)

    @staticmethod
    def _marker(cells: Sequence[Cell]) -> str:
        named = "\x00".join(f"{topic}\x01{channel}" for topic, channel in sorted(cells))
        return hashlib.sha256(named.encode()).hexdigest()[:16]

    def _failed(self, exc: Exception) -> None:
        self._telemetry.limit_error()
        log.warning("rate_limit_unavailable", error=type(exc).__name__)


def limits_of(settings: Mapping[Rule, str]) -> dict[Rule, str]:
    """The configured limits, without the rules switched off (an empty value)."""
    return {rule: value for rule, value in settings.items() if value.strip()}
