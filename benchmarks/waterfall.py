"""The latency waterfall of one measured phase, from Prometheus histograms.

Before and after a phase, the worker's ``/metrics`` (``optout_waterfall_seconds{step}``, once
per batch) and the sender's (``optout_sdk_follower_seconds{step}``, once per event) are read;
the difference of the cumulative buckets is the phase's histogram, and each step's p50 and p99
are interpolated within its bucket as Prometheus's ``histogram_quantile`` does. Their
precision is the bucket ladder's (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100 ms ...): a figure
says which bucket the quantile fell in, and where in it under an even spread.

The steps on a sender's path, in order: the worker's ``fetch``, ``queued``, ``decode``,
``postgresql``, ``outputs_queued`` and ``redis``; then the SDK's ``fetch`` (from the event's
Kafka timestamp, taken when the worker sent it right after its Redis write, so it covers the
event's acknowledgement) and ``apply``. The worker's ``event_ack`` and ``outcome_ack``
overlap the SDK's fetch or come after the event: they are reported, not stacked.
"""

from __future__ import annotations

import asyncio
import math
import re
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

WORKER_METRIC = "optout_waterfall_seconds"
SDK_METRIC = "optout_sdk_follower_seconds"
WORKER_PATH_STEPS = ("fetch", "queued", "decode", "postgresql", "outputs_queued", "redis")
WORKER_OFF_PATH_STEPS = ("event_ack", "outcome_ack")
SDK_STEPS = ("fetch", "apply")

# step -> upper bound (seconds, inf for +Inf) -> cumulative count
Buckets = dict[str, dict[float, float]]

_SAMPLE = re.compile(r"^(?P<name>\w+)_bucket\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_buckets(text: str, metric: str) -> Buckets:
    """The cumulative buckets of ``metric``'s histogram by its ``step`` label, from a
    Prometheus text exposition."""
    found: Buckets = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != metric:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if "step" not in labels or "le" not in labels:
            continue
        le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
        found.setdefault(labels["step"], {})[le] = float(match["value"])
    return found


def delta(before: Buckets, after: Buckets) -> Buckets:
    """What was observed between two readings (a step missing before counts from zero)."""
    return {
        step: {le: count - before.get(step, {}).get(le, 0.0) for le, count in buckets.items()}
        for step, buckets in after.items()
    }


def quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """``histogram_quantile(q)`` over cumulative buckets, in seconds: linear within the
    bucket the rank falls in (from 0 for the first), the largest finite bound if it falls in
    +Inf; None without observations."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = (bound if not math.isinf(bound) else lower), count
    return lower


def step_figures(buckets: Buckets, steps: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per step: observations in the phase, p50 and p99 in ms (None when not observed)."""
    out: dict[str, dict[str, Any]] = {}
    for step in steps:
        b = buckets.get(step) or {}
        count = max(b.values(), default=0.0)
        p50, p99 = quantile(b, 0.5), quantile(b, 0.99)
        out[step] = {
            "count": int(count),
            "p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
        }
    return out


def phase_waterfall(
    worker: tuple[Buckets, Buckets] | None, sdk: tuple[Buckets, Buckets] | None
) -> dict[str, Any]:
    """The phase's steps from (before, after) readings of the worker's and the sender's
    histograms; a side not read is left out."""
    out: dict[str, Any] = {"method": "histogram deltas over the phase, histogram_quantile"}
    if worker is not None:
        out["worker"] = step_figures(delta(*worker), (*WORKER_PATH_STEPS, *WORKER_OFF_PATH_STEPS))
    if sdk is not None:
        out["sdk"] = step_figures(delta(*sdk), SDK_STEPS)
    return out


def path_steps(waterfall: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The steps on a sender's path, in order, labelled ``worker fetch`` ... ``sdk apply``;
    a side not measured is left out."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    for side, steps in (("worker", WORKER_PATH_STEPS), ("sdk", SDK_STEPS)):
        figures = waterfall.get(side)
        if isinstance(figures, Mapping):
            found += [(f"{side} {s}", figures.get(s) or {}) for s in steps]
    return found


async def read_metrics(url: str, *, timeout_s: float = 5.0) -> str:
    """One scrape of a ``/metrics`` endpoint (the standard library's client, in a thread)."""

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return str(answer.read().decode("utf-8"))

    return await asyncio.to_thread(fetch)


async def read_buckets(url: str | None, metric: str) -> Buckets | None:
    """The histogram's buckets at ``url``, or None when there is no URL or no answer."""
    if url is None:
        return None
    try:
        return parse_buckets(await read_metrics(url), metric)
    except OSError:
        return None


def pair(before: Buckets | None, after: Buckets | None) -> tuple[Buckets, Buckets] | None:
    return (before, after) if before is not None and after is not None else None


def stacked(rates: Sequence[str], waterfalls: Mapping[str, Any]) -> dict[str, list[float]]:
    """Per path step, its p50 in ms at each rate (0 where not measured): the plot's bars."""
    labels: list[str] = []
    for rate in rates:
        for label, _ in path_steps(waterfalls.get(rate) or {}):
            if label not in labels:
                labels.append(label)
    bars: dict[str, list[float]] = {label: [] for label in labels}
    for rate in rates:
        found = dict(path_steps(waterfalls.get(rate) or {}))
        for label in labels:
            bars[label].append(float((found.get(label) or {}).get("p50_ms") or 0.0))
    return bars
