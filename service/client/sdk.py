"""The sender's SDK: "may I send this?" answered from memory, Redis, or PostgreSQL.

Answers come, in order, from the in-process cache (fed by the preference-changed events,
see ``local_cache`` for its staleness bound), from Redis, and on a Redis miss from
PostgreSQL, whose state is then copied into Redis with the worker's version compare-and-set.
Every answer is the domain's ``is_allowed``: the SDK cannot disagree with the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType

from service.adapters.postgres.pool import create_pool
from service.adapters.redis_client import create_redis
from service.application.decisions import DecisionService, SubjectPreferences
from service.bootstrap import build_decisions, load_configured_catalog
from service.client.follower import PreferencesFollower
from service.client.local_cache import LocalCache
from service.domain.model import Decision, SubjectKey, SubjectState
from service.settings import Settings


class OptoutClient:
    """Connect with ``await OptoutClient.connect(settings)`` or ``async with``; then ask.

    One client per process: it holds a PostgreSQL pool, a Redis connection pool and, with
    the local cache on, a Kafka consumer of the preferences topic.
    """

    def __init__(
        self,
        decisions: DecisionService,
        local: LocalCache | None,
        follower: PreferencesFollower | None,
        stack: AsyncExitStack,
    ) -> None:
        self._decisions = decisions
        self._local = local
        self.follower = follower
        self._stack = stack

    @classmethod
    async def connect(
        cls, settings: Settings | None = None, *, local_cache: bool | None = None
    ) -> OptoutClient:
        """Open the connections; with the local cache, also start following the events.

        ``local_cache`` overrides ``OPTOUT_CLIENT_LOCAL_CACHE``; one-shot tools turn it off.
        """
        settings = settings or Settings()
        use_local = settings.client_local_cache if local_cache is None else local_cache
        stack = AsyncExitStack()
        try:
            pool = await create_pool(
                settings.database_dsn, settings.database_schema, settings.database_pool_size
            )
            stack.push_async_callback(pool.close)
            redis = create_redis(settings.redis_dsn)
            stack.push_async_callback(redis.aclose)
            decisions = build_decisions(settings, load_configured_catalog(settings), pool, redis)
            local: LocalCache | None = None
            follower: PreferencesFollower | None = None
            if use_local:
                local = LocalCache(
                    decisions.decide,
                    max_entries=settings.client_local_cache_size,
                    max_age=settings.client_local_cache_max_age_seconds,
                )
                follower = PreferencesFollower(
                    settings.kafka_bootstrap,
                    settings.topic_preferences,
                    local,
                    stall_seconds=settings.client_local_cache_stall_seconds,
                )
                await follower.start()
                stack.push_async_callback(follower.stop)
        except BaseException:
            await stack.aclose()
            raise
        return cls(decisions, local, follower, stack)

    async def close(self) -> None:
        await self._stack.aclose()

    async def __aenter__(self) -> OptoutClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def local_cache(self) -> LocalCache | None:
        return self._local

    async def is_allowed(
        self, subject_id: str, topic: str, channel: str, tenant: str = "default"
    ) -> Decision:
        """May `topic` be sent to the subject on `channel`? The answer carries its reason.

        Raises ``UnknownTopic`` / ``UnknownChannel`` (``service.domain.catalog``) for names
        outside the catalog: a default answer would hide the typo.
        """
        local = self._local
        if local is None:
            return await self._decisions.is_allowed(SubjectKey(tenant, subject_id), topic, channel)
        hit = local.decision(tenant, subject_id, topic, channel)
        if hit is not None:
            return hit
        empty = self._decisions.validate(topic, channel)
        if empty.basis == "mandatory":
            return empty
        return self._decisions.decide(
            await self._state(SubjectKey(tenant, subject_id)), topic, channel
        )

    async def preferences(self, subject_id: str, tenant: str = "default") -> SubjectPreferences:
        """The subject's rules and the decision for every catalog topic and channel."""
        return self._decisions.preferences_of(await self._state(SubjectKey(tenant, subject_id)))

    async def filter_allowed(
        self, subject_ids: Sequence[str], topic: str, channel: str, tenant: str = "default"
    ) -> list[str]:
        """The ids a campaign may send to, in the given order; a few Redis calls in all."""
        local = self._local
        if local is None:
            return await self._decisions.filter_allowed(tenant, subject_ids, topic, channel)
        empty = self._decisions.validate(topic, channel)
        if empty.basis == "mandatory":
            return list(subject_ids)
        # Memoised answers for the cached subjects; one bulk read for the others.
        known = [local.decision(tenant, sid, topic, channel) for sid in subject_ids]
        missing = [sid for sid, d in zip(subject_ids, known, strict=True) if d is None]
        fetched = await self._decisions.states(tenant, missing) if missing else []
        for state in fetched:
            local.put(state)
        allowed_new = set(
            self._decisions.allowed_among(
                ((s.key.subject_id, s.rules) for s in fetched), topic, channel
            )
        )
        return [
            sid
            for sid, d in zip(subject_ids, known, strict=True)
            if (d.allowed if d is not None else sid in allowed_new)
        ]

    async def _state(self, key: SubjectKey) -> SubjectState:
        local = self._local
        if local is not None and (cached := local.get(key)) is not None:
            return cached
        state = await self._decisions.state(key)
        if local is not None:
            local.put(state)
        return state
