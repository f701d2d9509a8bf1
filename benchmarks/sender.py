"""A sender's process: the SDK with its local cache, reporting when each opt-out takes effect.

The time to effect a sender sees is the moment its SDK answers "no" for the opted-out topic
and channel. The SDK's local cache answers from the states its follower applies from the
preference-changed events, so this process wraps the cache's ``apply``: right after each
state is applied it asks the cache, for every opt-out rule of a command not reported yet,
the question that rule answers (its topic, or ``marketing`` for ``*``; its channel, or
``email`` for ``*``; channel ``*`` for a data use) and reports the command once the answer
is "no" and names that rule. When the cache may not answer at that moment (its follower is
not caught up), a sender's check goes to Redis: the command is then asked through
``OptoutClient.is_allowed`` (one question at a time, every millisecond) until it says no,
and reported with the source ``sdk``.

It runs apart from the load generator, so that decoding every event does not hold up the
generator's clock, and prints one line per command on stdout: ``command_id perf_counter
source``. ``perf_counter`` is the system's monotonic clock on Linux, the same in every
process, so the generator subtracts its own send times from these. ``ready`` is printed
once the cache is on. SIGTERM stops it.

With ``--metrics-port N`` it serves the SDK's metrics (``optout_sdk_follower_seconds``) on
127.0.0.1:N, for the waterfall (``benchmarks/waterfall.py``).

Run: ``python -m benchmarks.sender [--metrics-port N]`` with the service's ``OPTOUT_*``
variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time

from prometheus_client import start_http_server

from service.adapters.catalog_file import configured_catalog
from service.client import OptoutClient
from service.client.local_cache import LocalCache
from service.domain.catalog import Catalog
from service.domain.model import WILDCARD, Rule, SubjectState
from service.domain.sms_restore import REGISTERS
from service.logging import configure_logging
from service.settings import Settings

POLL_SECONDS = 0.001
POLL_GIVE_UP_SECONDS = 30.0


def question(catalog: Catalog, rule: Rule) -> tuple[str, str]:
    """A question the rule decides on its own: a concrete topic and channel it covers."""
    topic = "marketing" if rule.topic == WILDCARD else rule.topic
    if catalog.is_data_use(topic):
        return topic, WILDCARD
    return topic, "email" if rule.channel == WILDCARD else rule.channel


class EffectReporter:
    """Hooks a local cache's ``apply`` and reports each opt-out once the SDK says no."""

    def __init__(self, client: OptoutClient, cache: LocalCache, catalog: Catalog) -> None:
        self._client = client
        self._cache = cache
        self._catalog = catalog
        self._apply = cache.apply
        self._reported: set[str] = set()
        # Opt-outs applied while the cache could not answer: asked through the SDK (Redis)
        # until it says no. command id -> (tenant, subject, topic, channel, given up at).
        self._pending: dict[str, tuple[str, str, str, str, float]] = {}
        self._wake = asyncio.Event()
        self._lines: list[str] = []
        cache.apply = self._applied  # type: ignore[method-assign]

    def _applied(self, state: SubjectState) -> None:
        self._apply(state)
        now = time.perf_counter()
        key = state.key
        for rule in state.rules.values():
            if (
                rule.action != "opt_out"
                or rule.command_id in self._reported
                # The SMS keyword registers (`#kept`, `#restore`) are bookkeeping, not topics
                # a sender asks about; the same command's `*` rule is asked instead.
                or rule.topic in REGISTERS
            ):
                continue
            topic, channel = question(self._catalog, rule)
            decision = self._cache.decision(key.tenant, key.subject_id, topic, channel)
            if decision is None:  # the cache may not answer now: the sender asks Redis
                self._reported.add(rule.command_id)
                self._pending[rule.command_id] = (
                    key.tenant,
                    key.subject_id,
                    topic,
                    channel,
                    now + POLL_GIVE_UP_SECONDS,
                )
                self._wake.set()
            elif (
                not decision.allowed
                and decision.rule is not None
                and decision.rule.command_id == rule.command_id
            ):
                self._reported.add(rule.command_id)
                self._lines.append(f"{rule.command_id} {now:.6f} local_cache\n")

    async def poll(self) -> None:
        """Ask the SDK, one question at a time, for the opt-outs the cache could not answer
        when they were applied, until each says no."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                for command_id, (tenant, subject_id, topic, channel, until) in list(
                    self._pending.items()
                ):
                    decision = await self._client.is_allowed(subject_id, topic, channel, tenant)
                    now = time.perf_counter()
                    if not decision.allowed:
                        self._lines.append(f"{command_id} {now:.6f} sdk\n")
                    elif now < until:
                        continue
                    del self._pending[command_id]
                await asyncio.sleep(POLL_SECONDS)

    def flush(self) -> None:
        if self._lines:
            sys.stdout.write("".join(self._lines))
            sys.stdout.flush()
            self._lines.clear()


def metrics_port(argv: list[str]) -> int | None:
    """``--metrics-port N``: serve the SDK's metrics on 127.0.0.1:N."""
    if "--metrics-port" in argv:
        return int(argv[argv.index("--metrics-port") + 1])
    return None


async def main() -> None:
    settings = Settings()
    configure_logging("WARNING", settings.log_format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.ExitStack() as stack:
        await _follow(settings, stop, stack)


async def _follow(settings: Settings, stop: asyncio.Event, stack: contextlib.ExitStack) -> None:
    async with await OptoutClient.connect(settings, local_cache=True) as client:
        cache = client.local_cache
        assert cache is not None
        assert client.metrics is not None
        if port := metrics_port(sys.argv[1:]):
            # The follower's steps, as a sender would serve them (README, "The SDK's metrics").
            server, _ = start_http_server(port, addr="127.0.0.1", registry=client.metrics.registry)
            stack.callback(server.shutdown)
        reporter = EffectReporter(client, cache, configured_catalog(settings.catalog_file))
        poller = asyncio.create_task(reporter.poll())
        for _ in range(6_000):  # the follower switches the cache on by itself, within 60 s
            if cache.usable() or stop.is_set():
                break
            await asyncio.sleep(0.01)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)
            reporter.flush()
            if poller.done():
                poller.result()  # a failure of the SDK's reads ends the run, visibly
        reporter.flush()
        poller.cancel()


if __name__ == "__main__":
    asyncio.run(main())
