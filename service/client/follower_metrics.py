"""What the SDK's follower reports about each event it applies (README, "The SDK's metrics").

Two steps continue the worker's latency waterfall (``optout_waterfall_seconds``) to the
sender: ``fetch``, from the event's Kafka timestamp (set when the worker sent it, after its
Redis write) until the follower received it, and ``apply``, decoding the event and applying it
to the local cache. Each is observed once per event; the wall clock is read once per fetch.

``SdkMetrics`` keeps them on a Prometheus registry of the sender's choosing (its own, by
default), which the sender serves from its own ``/metrics``, for example with
``prometheus_client.make_asgi_app(client.metrics.registry)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, get_args

from prometheus_client import CollectorRegistry, Histogram

from service.adapters.prometheus_metrics import STEP_BUCKETS

FollowerStep = Literal["fetch", "apply"]
FOLLOWER_STEPS: tuple[FollowerStep, ...] = get_args(FollowerStep)


class FollowerTelemetry(Protocol):
    """Where the follower reports the steps of the events of one fetch, in seconds."""

    def events(self, fetch: Sequence[float], apply: Sequence[float]) -> None: ...


class SdkMetrics:
    """``optout_sdk_follower_seconds{step}`` on ``registry`` (a new one when not given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.follower_steps = Histogram(
            "optout_sdk_follower_seconds",
            "Each preference-changed event's way through the SDK's follower, observed once per"
            " event: fetch (from the event's Kafka timestamp until the follower received it),"
            " apply (decoded and applied to the local cache).",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self._fetch = self.follower_steps.labels("fetch")
        self._apply = self.follower_steps.labels("apply")

    def events(self, fetch: Sequence[float], apply: Sequence[float]) -> None:
        for seconds in fetch:
            self._fetch.observe(max(0.0, seconds))
        for seconds in apply:
            self._apply.observe(seconds)
