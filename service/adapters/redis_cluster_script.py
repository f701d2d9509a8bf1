"""A Lua script run on Redis Cluster once per hash slot, the calls pipelined per node.

A cluster refuses a script whose keys span hash slots (CROSSSLOT), so a script written for
many keys is called once for each slot its keys fall in. Sent one by one, a batch spread
over many slots would cost a round trip per slot (or a connection per slot, sent
concurrently); in one cluster pipeline it costs one round trip per node, the nodes
answering side by side.

While a slot moves between nodes (resharding, failover), a call for several keys of that
slot can be refused (TRYAGAIN when its keys are split between the two nodes, ASK or MOVED
otherwise). Such a call is split into one call per key, which redis-py redirects to
wherever each key is: every key is still handled by the same script, exactly once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, NoScriptError, TryAgainError

Arg = bytes | str | int

# What a call refused for where its slot is now answers (MovedError is an AskError).
_REDIRECTED = (AskError, TryAgainError)


@dataclass(frozen=True, slots=True)
class SlotCall:
    """One script call: keys of one slot; ARGV is the script's shared arguments, then
    ``args_per_key`` arguments for each key in order."""

    keys: Sequence[str]
    per_key_args: Sequence[Arg] = ()


class PerSlotScript:
    """``merge`` turns the answers of the one-key calls a refused call was split into back
    into the answer the whole call would have given (a sum of counts, a concatenation)."""

    def __init__(
        self,
        redis: RedisCluster,
        source: str,
        *,
        args_per_key: int,
        merge: Callable[[list[Any]], Any],
    ) -> None:
        self._redis = redis
        self._source = source
        self._sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._args_per_key = args_per_key
        self._merge = merge

    async def run(self, calls: Sequence[SlotCall], shared_args: Sequence[Arg] = ()) -> list[Any]:
        """Each call's answer, in order; raises the first error no retry could avoid."""
        if not calls:
            return []
        answers = await self._loaded(calls, shared_args, redirections=False)
        refused = [i for i, answer in enumerate(answers) if isinstance(answer, _REDIRECTED)]
        if refused:
            await self._one_key_at_a_time(
                [calls[i] for i in refused], shared_args, answers, refused
            )
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    async def _loaded(
        self, calls: Sequence[SlotCall], shared_args: Sequence[Arg], *, redirections: bool
    ) -> list[Any]:
        """The pipeline's answers; a node that does not know the script (restarted, failed
        over, SCRIPT FLUSH) answers NOSCRIPT, so the script is loaded on every primary and
        only those calls are sent again: no call runs twice."""
        answers = await self._pipelined(calls, shared_args, redirections=redirections)
        unknown = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
        if unknown:
            await self._redis.script_load(self._source)
            again = await self._pipelined(
                [calls[i] for i in unknown], shared_args, redirections=redirections
            )
            for i, answer in zip(unknown, again, strict=True):
                answers[i] = answer
        return answers

    async def _one_key_at_a_time(
        self,
        calls: Sequence[SlotCall],
        shared_args: Sequence[Arg],
        answers: list[Any],
        positions: Sequence[int],
    ) -> None:
        n = self._args_per_key
        singles = [
            SlotCall([key], call.per_key_args[j * n : (j + 1) * n])
            for call in calls
            for j, key in enumerate(call.keys)
        ]
        found = iter(await self._loaded(singles, shared_args, redirections=True))
        for call, i in zip(calls, positions, strict=True):
            parts = [next(found) for _ in call.keys]
            failed = next((p for p in parts if isinstance(p, Exception)), None)
            answers[i] = failed if failed is not None else self._merge(parts)

    async def _pipelined(
        self, calls: Sequence[SlotCall], shared_args: Sequence[Arg], *, redirections: bool
    ) -> list[Any]:
        redis = self._redis
        await redis.initialize()  # a no-op once the slots are known; after a failure it maps them
        pipe = redis.pipeline(transaction=False)
        for call in calls:
            # The pipeline's ``evalsha`` method is blocked in cluster mode because it would
            # leave NOSCRIPT to the caller; ``run`` handles NOSCRIPT. The node is named here
            # from the call's first key (one slot, one node), or redis-py would hash every
            # key of every call again to find it. One-key calls after a refusal are routed
            # by redis-py, which follows the redirections.
            node = {} if redirections else {"target_nodes": redis.get_node_from_key(call.keys[0])}
            pipe.execute_command(
                "EVALSHA",
                self._sha,
                len(call.keys),
                *call.keys,
                *shared_args,
                *call.per_key_args,
                **node,
            )
        answers: list[Any] = await pipe.execute(
            raise_on_error=False, allow_redirections=redirections
        )
        return answers
