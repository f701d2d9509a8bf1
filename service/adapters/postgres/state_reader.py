"""Set-based reads of subject states for the read path (cache misses of SDK and API).

Separate from the command store on purpose: the read path never locks, never writes, and
must answer for thousands of subjects in one round trip when a campaign filter misses Redis.

Erased identifiers. Erasure deletes an identifier's row and keeps a suppression under its
keyed hash (``identifiers.pseudonym``). With the identifier key, the query also asks for the
pseudonym of every identifier, and an identifier found only that way is answered as a
forward to its suppression (version 0): the caller follows it, and caches the suppression
under its own key, never the identifier in clear. Without the key, an identifier without a
row in a tenant that has erased subjects cannot be told from an erased one: the read fails
(``IdentifierKeyMissing``) rather than answer the catalog default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from service.adapters.postgres import queries
from service.adapters.postgres.rows import rule_from_row
from service.application.decisions import IdentifierKeyMissing
from service.domain.identifiers import InvalidIdentifier, is_identifier, normalize, pseudonym
from service.domain.model import Rule, SubjectKey, SubjectState


def _storable(key: SubjectKey) -> bool:
    # PostgreSQL text cannot hold NUL: such a subject cannot exist, and asking must not fail.
    return "\x00" not in key.tenant and "\x00" not in key.subject_id


class PostgresStateReader:
    def __init__(self, pool: asyncpg.Pool, identifier_key: bytes | None = None) -> None:
        self._pool = pool
        self._identifier_key = identifier_key or None

    async def load_states(self, keys: Sequence[SubjectKey]) -> dict[SubjectKey, SubjectState]:
        """The state of every asked subject; an unknown one is the empty version-0 state.

        An erased identifier's answer is a forward to its suppression, whose state is in the
        answer too (under its own key).
        """
        asked = [k for k in dict.fromkeys(keys) if _storable(k)]
        suppressions = self._suppressions(asked)
        looked_up = [*asked, *dict.fromkeys(suppressions.values())]
        # Without the key, tenants whose identifiers might be erased ones are checked.
        tenants = (
            sorted({k.tenant for k in asked if is_identifier(k.subject_id)})
            if self._identifier_key is None
            else []
        )
        rows = (
            await self._pool.fetch(
                queries.LOAD_STATES,
                [k.tenant for k in looked_up],
                [k.subject_id for k in looked_up],
                tenants,
            )
            if looked_up
            else []
        )
        found, erased_tenants = _states_from_rows(rows)
        answer: dict[SubjectKey, SubjectState] = {}
        for key in dict.fromkeys(keys):
            state = found.get(key)
            if state is not None:
                answer[key] = state
                continue
            suppression = suppressions.get(key)
            if suppression is not None and suppression in found:
                answer[key] = SubjectState.adopting(key, 0, {}, suppression.subject_id)
                answer[suppression] = found[suppression]
            elif key.tenant in erased_tenants and is_identifier(key.subject_id):
                raise IdentifierKeyMissing()
            else:
                answer[key] = SubjectState.empty(key)
        return answer

    def _suppressions(self, asked: Sequence[SubjectKey]) -> dict[SubjectKey, SubjectKey]:
        """The suppression key each asked identifier would have if it were erased."""
        secret = self._identifier_key
        if secret is None:
            return {}
        found: dict[SubjectKey, SubjectKey] = {}
        for key in asked:
            if not is_identifier(key.subject_id):
                continue
            try:
                # Entry points normalise; this is the spelling erasure hashed, whatever
                # the caller did.
                name = normalize(key.subject_id)
            except InvalidIdentifier:
                continue  # never a valid identifier, so never erased
            found[key] = SubjectKey(key.tenant, pseudonym(secret, key.tenant, name))
        return found


def _states_from_rows(
    rows: Sequence[Any],
) -> tuple[dict[SubjectKey, SubjectState], set[str]]:
    """States from rows of (subject, version, forward, erased, rule or NULLs) of a LEFT
    JOIN, and the tenants reported as holding erased subjects (rows without a subject)."""
    heads: dict[SubjectKey, Any] = {}
    rules: dict[SubjectKey, dict[tuple[str, str], Rule]] = {}
    erased_tenants: set[str] = set()
    for row in rows:
        if row["subject_id"] is None:
            erased_tenants.add(row["tenant"])
            continue
        key = SubjectKey(row["tenant"], row["subject_id"])
        heads[key] = row
        table = rules.setdefault(key, {})
        if row["topic"] is not None:
            table[(row["topic"], row["channel"])] = rule_from_row(row)
    states = {
        key: SubjectState.adopting(
            key, int(row["version"]), rules[key], row["merged_into"], bool(row["erased"])
        )
        for key, row in heads.items()
    }
    return states, erased_tenants
