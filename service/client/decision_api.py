"""The decision API, asked by the SDK for the one answer it cannot give alone.

A sender holds read-only credentials and not ``OPTOUT_IDENTIFIER_KEY``: the key under which
erasure keeps an erased identifier's suppression (a keyed hash) must stay with the service,
or every sender could brute-force erased phone numbers. So an identifier without a row of its
own, in a tenant that has erased subjects, is asked of the API (scope ``check``), which holds
the key. Any other check never leaves the SDK's own reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from service.application.errors import DependencyUnavailable
from service.domain.model import Decision, Rule, SubjectKey

CHECK_BATCH = 1_000


def _decision(body: dict[str, Any]) -> Decision:
    reason = body["reason"]
    found = reason.get("rule")
    rule = None
    if found is not None:
        rule = Rule(
            found["topic"],
            found["channel"],
            found["action"],
            datetime.fromisoformat(found["occurred_at"]),
            found["source_channel"],
            found["command_id"],
        )
    return Decision(body["allowed"], reason["basis"], rule, body["topic"], body["channel"])


class DecisionApi:
    def __init__(self, base_url: str, token: str, *, timeout_seconds: float = 5.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_seconds,
        )

    def __repr__(self) -> str:
        return f"DecisionApi(base_url={str(self._http.base_url)!r})"  # never the token

    async def close(self) -> None:
        await self._http.aclose()

    async def is_allowed(self, key: SubjectKey, topic: str, channel: str) -> Decision:
        path = f"/v1/subjects/{quote(key.subject_id, safe='')}/check"
        params = {"topic": topic, "channel": channel, "tenant": key.tenant}
        return _decision(await self._json("GET", path, params=params))

    async def allowed_among(
        self, tenant: str, subject_ids: Sequence[str], topic: str, channel: str
    ) -> list[str]:
        allowed: list[str] = []
        for start in range(0, len(subject_ids), CHECK_BATCH):
            chunk = subject_ids[start : start + CHECK_BATCH]
            checks = [
                {"subject_id": s, "topic": topic, "channel": channel, "tenant": tenant}
                for s in chunk
            ]
            body = await self._json("POST", "/v1/check", json={"checks": checks})
            answers = [_decision(result) for result in body["results"]]
            allowed += [s for s, d in zip(chunk, answers, strict=True) if d.allowed]
        return allowed

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DependencyUnavailable("decision-api", type(exc).__name__) from exc
        if response.status_code >= 500:
            raise DependencyUnavailable("decision-api", f"HTTP {response.status_code}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body
