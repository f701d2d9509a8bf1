"""The service's Prometheus metrics, one registry per process (README, "Metrics").

Names follow Prometheus conventions: counters end in `_total`, durations are `_seconds`
histograms. Per-record figures arrive aggregated per lane, so a batch costs a few metric
updates, not a few per record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.application.rate_limits import RULES
from service.application.telemetry import LaneFigures
from service.application.waterfall import STEPS, Step

# Seconds, from a local round trip to a long outage: one ladder for every latency here.
_LATENCY = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
# A step of the waterfall, from a tenth of a millisecond to a stall of seconds.
STEP_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
    5.0,
)  # fmt: skip
_SIZES = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
DEPENDENCIES = ("postgresql", "redis", "kafka")
STAGES = ("decode", "postgresql", "redis", "publish", "commit")
# DeadLetter codes (``service.contract.decode``) and isolation's `poison`: present at zero
# from the start, so that the first dead letter of a class is an increase an alert sees.
DEAD_LETTER_CLASSES = (
    "empty", "too_large", "not_utf8", "not_json", "not_object", "no_command_id", "poison",
)  # fmt: skip


class PrometheusMetrics:
    """Implements the use cases' telemetry ports and the consumer's, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "optout_commands_consumed", "Records consumed from the commands topic.", registry=r
        )
        self.outcomes = Counter(
            "optout_outcomes",
            "Outcomes published, by status and reason (empty unless rejected).",
            ["status", "reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            "optout_dead_letters",
            "Records sent to the dead-letter topic, by x-error class.",
            ["error"],
            registry=r,
        )
        self.poison = Counter(
            "optout_poison_records",
            "Records isolated because a dependency refused them.",
            ["dependency"],
            registry=r,
        )
        self.batch_records = Histogram(
            "optout_batch_records", "Records per consumed batch.", buckets=_SIZES, registry=r
        )
        self.stage = Histogram(
            "optout_stage_duration_seconds",
            "Time per batch stage (per lane for decode, postgresql, redis and publish).",
            ["stage"],
            buckets=_LATENCY,
            registry=r,
        )
        self.record_to_event = Histogram(
            "optout_record_to_event_seconds",
            "From a command record's Kafka timestamp to its event acknowledged.",
            buckets=_LATENCY,
            registry=r,
        )
        self.waterfall_steps = Histogram(
            "optout_waterfall_seconds",
            "A batch's way from the Kafka timestamp to its outcomes acknowledged, in consecutive"
            " steps, observed once per batch: fetch (for the batch's oldest record), queued,"
            " decode, postgresql, outputs_queued, redis, event_ack, outcome_ack.",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self._steps = {step: self.waterfall_steps.labels(step) for step in STEPS}
        self.occurred_to_effective = Histogram(
            "optout_occurred_to_effective_seconds",
            "From a command's occurred_at to its effective_at.",
            buckets=_LATENCY,
            registry=r,
        )
        self.sender_effects = Histogram(
            "optout_sender_effect_seconds",
            "From an opt-out event's effective_at to the first report of a sender instance"
            " that had applied it (effect receipts), by sender.",
            ["sender"],
            buckets=_LATENCY,
            registry=r,
        )
        self.sender_behind = Gauge(
            "optout_sender_behind_records",
            "Preferences events a sender has not applied yet (its slowest instance, summed over"
            " the partitions this worker times).",
            ["sender"],
            registry=r,
        )
        self.sender_report_age = Gauge(
            "optout_sender_last_report_age_seconds",
            "Seconds since the sender's latest applied report (sent every few seconds when idle).",
            ["sender"],
            registry=r,
        )
        self.lag_records = Gauge(
            "optout_consumer_lag_records",
            "End offset minus the worker's position, per partition, as the worker sees it.",
            ["topic", "partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "optout_consumer_lag_seconds",
            "Age of the oldest record not yet processed, per partition (0 when caught up).",
            ["topic", "partition"],
            registry=r,
        )
        self.dependency_errors = Counter(
            "optout_dependency_errors",
            "Dependency failures seen, by dependency.",
            ["dependency"],
            registry=r,
        )
        self.retries = Counter(
            "optout_retries", "Batch retries caused by a dependency.", ["dependency"], registry=r
        )
        self.ready = Gauge("optout_ready", "1 when /readyz would answer 200.", registry=r)
        self.dependency_up = Gauge(
            "optout_dependency_up",
            "1 when the dependency's readiness check passes.",
            ["dependency"],
            registry=r,
        )
        self.checks = Counter(
            "optout_checks",
            "Read-path decisions, by answer and by where the state came from.",
            ["answer", "source"],
            registry=r,
        )
        self.check_duration = Histogram(
            "optout_check_duration_seconds",
            "Read-path decision latency, by source.",
            ["source"],
            buckets=_LATENCY,
            registry=r,
        )
        self.rate_limited = Counter(
            "optout_rate_limited",
            "Requests refused with 429, by rate-limit rule (opt-outs are never refused).",
            ["rule"],
            registry=r,
        )
        self.repeats_absorbed = Counter(
            "optout_opt_out_repeats_absorbed",
            "Repeated opt-outs answered without publishing again, by channel.",
            ["channel"],
            registry=r,
        )
        self.rate_limit_errors = Counter(
            "optout_rate_limit_errors",
            "Rate-limit checks that Redis did not answer (the request was let through).",
            registry=r,
        )
        # Series that exist from the start, so rates and alerts have a zero to compare with.
        for rule in RULES:
            self.rate_limited.labels(rule)
        for stage in STAGES:
            self.stage.labels(stage)
        for error in DEAD_LETTER_CLASSES:
            self.dead_letters.labels(error)
        for dependency in DEPENDENCIES:
            self.dependency_errors.labels(dependency)
            self.retries.labels(dependency)
            self.poison.labels(dependency)

    # PipelineTelemetry
    def lane(self, figures: LaneFigures) -> None:
        self.stage.labels("decode").observe(figures.decode_seconds)
        self.stage.labels("postgresql").observe(figures.postgresql_seconds)
        self.stage.labels("redis").observe(figures.redis_seconds)
        self.stage.labels("publish").observe(figures.publish_seconds)
        for (status, reason), count in figures.outcomes.items():
            self.outcomes.labels(status, reason).inc(count)
        for error, count in figures.dead_letters.items():
            self.dead_letters.labels(error).inc(count)
        for seconds in figures.record_to_event_seconds:
            self.record_to_event.observe(seconds)
        for seconds in figures.occurred_to_effective_seconds:
            self.occurred_to_effective.observe(seconds)

    def poison_record(self, dependency: str) -> None:
        self.poison.labels(dependency).inc()

    # ReadTelemetry
    def check(self, allowed: bool, source: str, seconds: float) -> None:
        self.checks.labels("allowed" if allowed else "denied", source).inc()
        self.check_duration.labels(source).observe(seconds)

    def local_hit(self, allowed: bool) -> None:
        self.checks.labels("allowed" if allowed else "denied", "local").inc()

    # ThrottleTelemetry
    def limited(self, rule: str) -> None:
        self.rate_limited.labels(rule).inc()

    def absorbed(self, channel: str) -> None:
        self.repeats_absorbed.labels(channel).inc()

    def limit_error(self) -> None:
        self.rate_limit_errors.inc()

    # The consumer's
    def batch(self, records: int) -> None:
        self.consumed.inc(records)
        self.batch_records.observe(records)

    def committed(self, seconds: float) -> None:
        self.stage.labels("commit").observe(seconds)

    def waterfall(self, steps: Sequence[tuple[Step, float]]) -> None:
        for step, seconds in steps:
            self._steps[step].observe(seconds)

    def sender_effect(self, sender: str, seconds: float) -> None:
        self.sender_effects.labels(sender).observe(seconds)

    def sender_position(self, sender: str, behind_records: int, report_age: float) -> None:
        self.sender_behind.labels(sender).set(behind_records)
        self.sender_report_age.labels(sender).set(report_age)

    def retry(self, dependency: str) -> None:
        self.dependency_errors.labels(dependency).inc()
        self.retries.labels(dependency).inc()

    def lag(self, topic: str, partition: int, records: int, seconds: float) -> None:
        self.lag_records.labels(topic, str(partition)).set(records)
        self.lag_seconds.labels(topic, str(partition)).set(seconds)

    def forget_partition(self, topic: str, partition: int) -> None:
        for gauge in (self.lag_records, self.lag_seconds):
            with contextlib.suppress(KeyError):
                gauge.remove(topic, str(partition))

    def readiness(self, checks: dict[str, str | None]) -> None:
        self.ready.set(1 if all(why is None for why in checks.values()) else 0)
        for name, why in checks.items():
            self.dependency_up.labels(name).set(1 if why is None else 0)
