"""Runtime settings, read from ``OPTOUT_*`` environment variables.

The defaults point at the local stack that ``make stack`` starts, so a fresh clone runs
with no configuration at all.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_KEY_BYTES = 32
"""The shortest secret key accepted (256 bits, HMAC-SHA256's own strength)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPTOUT_", extra="ignore", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    # How every Kafka client authenticates and encrypts (adapters/kafka/connection.py, which
    # refuses an inconsistent combination at start). PLAINTEXT is for the local stack only.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_username: str = ""
    kafka_password: SecretStr = SecretStr("")
    # PEM files: the CA that signed the brokers' certificates (empty: the system's CAs), and
    # a client certificate and its key for mutual TLS.
    kafka_ca_file: Path | None = None
    kafka_cert_file: Path | None = None
    kafka_key_file: Path | None = None
    database_url: SecretStr = SecretStr("postgresql://optout:optout@127.0.0.1:55432/optout")
    database_schema: str = Field(default="optout", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    database_pool_size: int = Field(default=6, ge=1, le=100)
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:56379/0")
    # Redis Cluster instead of a standalone server: the URL names any one node, the client
    # discovers the others; the cache then runs its scripts once per hash slot.
    redis_cluster: bool = False
    redis_prefix: str = Field(default="optout", min_length=1)
    cache_ttl_seconds: int = Field(default=0, ge=0)

    topic_commands: str = "optout.commands.v1"
    # Imports, dead-letter replays and any other bulk producer of commands: a lane of its own
    # that the worker reads behind the live topic (adapters/kafka/priority.py). Empty: derived
    # from topic_commands (`optout.commands.v1` -> `optout.commands.bulk.v1`).
    topic_commands_bulk: str = ""
    topic_preferences: str = "optout.preferences.v1"
    topic_outcomes: str = "optout.outcomes.v1"
    topic_dlq: str = "optout.commands.dlq.v1"
    # Applied reports of the senders' SDKs (effect receipts); short retention. Empty: off.
    topic_sender_receipts: str = "optout.sender-receipts.v1"
    topic_partitions: int = Field(default=6, ge=1)
    topic_replication: int = Field(default=1, ge=1)
    consumer_group: str = "optout-worker"
    # How long the group waits for a worker that stopped answering before its partitions
    # move (the broker's group.min.session.timeout.ms, 6 s by default, bounds it from below),
    # and how often a worker says it is alive (at most a third of the session timeout).
    consumer_session_timeout_seconds: float = Field(default=7.0, ge=1.0, le=300.0)
    consumer_heartbeat_interval_seconds: float = Field(default=1.0, ge=0.1, le=100.0)
    # Static group membership: a restarted worker with the same id takes its partitions back
    # without a rebalance. Unique per worker process (`--processes N` appends `-i`).
    consumer_instance_id: str = Field(default="", max_length=200, pattern=r"^[A-Za-z0-9._-]*$")

    batch_max_records: int = Field(default=500, ge=1, le=10_000)
    # At most this many bulk-lane records in one batch: a live command waits behind no more
    # bulk work than this (README, Bulk lane).
    bulk_max_records_per_batch: int = Field(default=200, ge=1, le=10_000)
    batch_wait_seconds: float = Field(default=0.05, ge=0, le=1.0)
    worker_lanes: int = Field(default=3, ge=1, le=64)
    # A batch's Redis writes and Kafka publication overlap the next batch's transaction.
    worker_pipeline: bool = True
    max_record_bytes: int = Field(default=64 * 1024, ge=1_024)
    max_future_seconds: float = Field(default=300.0, ge=0)
    retry_backoff_max_seconds: float = Field(default=5.0, gt=0)
    # While a failing batch waits out its backoff, the failing dependency's readiness probe is
    # asked this often; the wait ends once it answers again (adapters/kafka/recovery.py).
    retry_probe_interval_seconds: float = Field(default=0.25, ge=0.05, le=10.0)
    # On SIGTERM: how long the in-flight batch may take to finish and commit.
    shutdown_deadline_seconds: float = Field(default=20.0, gt=0)
    # The processed-command and event logs keep this long, never less than the commands
    # topic keeps its records (application/retention.py); 0 switches pruning off.
    retention_seconds: int = Field(default=14 * 86_400, ge=0)
    retention_batch_rows: int = Field(default=5_000, ge=1, le=100_000)
    retention_interval_seconds: float = Field(default=60.0, gt=0)
    catalog_file: Path | None = None

    # The public surface: /v1, the pages and the SMS webhook.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65_535)
    # The admin surface: /healthz, /readyz, /metrics, /openapi.json, /asyncapi.json.
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8081, ge=0, le=65_535)
    # NAME:TOKEN:SCOPES[,...]; a secret, parsed by service.entrypoints.http.security.
    api_tokens: SecretStr = SecretStr("")
    # Larger request bodies are refused (413) before they are read into memory.
    http_max_body_bytes: int = Field(default=1024 * 1024, ge=1_024)

    # Channels (command intake, signed links, unsubscribe and preference pages, SMS): they
    # need a Kafka producer and an outcome follower. `auto`: on in `optout run` (all in one
    # process), off in `optout worker` and `optout api`, which scale apart.
    channels: Literal["auto", "on", "off"] = "auto"
    # KEY_ID:SECRET[:NOT_AFTER_DATE][,...]: keys that verify signed links (secret, each at
    # least 32 bytes); the signing one below. Parsed by domain/link_tokens.parse_link_keys.
    link_keys: SecretStr = SecretStr("")
    link_signing_key_id: str = ""  # empty: the first key of link_keys
    link_validity_seconds: int = Field(default=90 * 86_400, ge=60)
    # Preference-page links (they may opt in) expire sooner than unsubscribe links.
    preferences_link_validity_seconds: int = Field(default=7 * 86_400, ge=60)
    # Where people reach the pages: the base of every link and of the SMS signature URL.
    public_base_url: str = "http://127.0.0.1:8080"
    support_contact: str = "the support team of the sender of the message"
    # Twilio's auth token, which signs the SMS webhook's requests (secret).
    sms_auth_token: SecretStr = SecretStr("")
    # The HMAC key of erased identifiers' suppressions (domain/identifiers.py `pseudonym`).
    identifier_key: SecretStr = SecretStr("")
    erasure_fence_seconds: int = Field(default=10, ge=1, le=3_600)
    sms_default_region: str = Field(default="US", pattern=r"^[A-Z]{2}$")
    # +E164:TENANT[+TENANT...][,...]: the tenants each inbound number serves (empty: every
    # number serves `default`). A STOP to an unlisted number applies in every listed tenant.
    sms_numbers: str = ""
    # TENANT[,...]: where a reply of YES counts as START (empty: nowhere).
    sms_yes_tenants: str = ""
    # How long the first receipt time of an inbound SMS is kept (a replay within it is a
    # `duplicate`); never less than retention_seconds.
    sms_receipt_ttl_seconds: int = Field(default=30 * 86_400, ge=86_400)
    # How long the pages wait for the outcome before they say "received, taking effect".
    page_outcome_wait_seconds: float = Field(default=2.0, ge=0, le=10)

    # Rate limits (application/rate_limits.py), kept in Redis; each is a `limits` string
    # ("20/hour", "5 per minute"), empty to switch that rule off. Opt-outs are never refused.
    rate_limits: bool = True
    rate_limit_page_ip: str = "120/minute"  # page views and page opt-ins, per client address
    rate_limit_page_token: str = "60/minute"  # noqa: S105 (a limit) the same, per link
    rate_limit_subject_changes: str = "30/hour"  # page and SMS changes per subject
    rate_limit_sms_ip: str = "600/minute"  # SMS webhook calls other than STOP, per address
    rate_limit_sms_number: str = "10/hour"  # SMS replies other than STOP, per sender number
    rate_limit_api_token: str = "60000/minute"  # noqa: S105 (a limit) /v1 calls per token
    rate_limit_api_ip: str = "120/minute"  # /v1 calls without a valid token, per address
    # The same opt-out repeated within this window is answered, not published again.
    opt_out_repeat_window_seconds: int = Field(default=60, ge=1, le=86_400)

    # Read path: states copied from PostgreSQL into Redis on a miss expire, so ids that
    # were only ever asked about do not stay in Redis for good.
    cache_fill_ttl_seconds: int = Field(default=3_600, ge=0)
    # Subjects the service has never heard of are cached briefly, so that ids made up by a
    # reader cannot fill Redis.
    cache_unknown_ttl_seconds: int = Field(default=60, ge=1)
    client_local_cache: bool = True
    client_local_cache_size: int = Field(default=100_000, ge=1)
    client_local_cache_max_age_seconds: float = Field(default=30.0, gt=0)
    client_local_cache_bound_seconds: float = Field(default=0.5, ge=0.05)
    client_local_cache_stall_seconds: float = Field(default=2.0, gt=0)
    # SDK: the decision API and a `check` token, asked for identifiers that may be erased
    # (the SDK does not hold OPTOUT_IDENTIFIER_KEY); empty: such a check raises.
    client_api_url: str = ""
    client_api_token: SecretStr = SecretStr("")
    # SDK: the sender this process sends for, named in receipts, metrics and `optout lag
    # --senders`; how often it reports what it applied while applying, and when idle.
    client_sender: str = Field(default="unnamed", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    client_report_interval_seconds: float = Field(default=0.2, ge=0.05, le=1.0)
    client_report_idle_seconds: float = Field(default=5.0, ge=1.0, le=60.0)
    # Worker: how long a command's effect receipt is kept (one Redis hash per opt-out), and
    # how long a sender instance may stay silent before receipts leave it out.
    receipt_ttl_seconds: int = Field(default=3_600, ge=60, le=7 * 86_400)
    sender_live_seconds: float = Field(default=30.0, ge=5.0, le=3_600.0)

    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern=r"^(json|console)$")

    @field_validator("identifier_key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if raw and len(raw.encode()) < MIN_KEY_BYTES:
            raise ValueError(
                f"must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -base64 48`)"
            )
        return value

    @model_validator(mode="after")
    def _bulk_lane_apart(self) -> Settings:
        if self.commands_bulk_topic == self.topic_commands:
            raise ValueError(
                "OPTOUT_TOPIC_COMMANDS_BULK must differ from OPTOUT_TOPIC_COMMANDS: the bulk"
                " lane is a topic of its own"
            )
        return self

    @model_validator(mode="after")
    def _heartbeats_within_the_session(self) -> Settings:
        if self.consumer_heartbeat_interval_seconds * 3 > self.consumer_session_timeout_seconds:
            raise ValueError(
                "OPTOUT_CONSUMER_HEARTBEAT_INTERVAL_SECONDS must be at most a third of"
                " OPTOUT_CONSUMER_SESSION_TIMEOUT_SECONDS"
            )
        return self

    def as_environment(self) -> dict[str, str]:
        """These settings as ``OPTOUT_*`` variables, for starting another process with them."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            raw = value.get_secret_value() if isinstance(value, SecretStr) else value
            env[f"OPTOUT_{name.upper()}"] = str(raw)
        return env

    @property
    def commands_bulk_topic(self) -> str:
        """The bulk lane's topic: `topic_commands_bulk`, or derived from `topic_commands`
        when empty (a property, not a stored default, so that a copy of the settings with
        other topic names gets its own bulk topic too)."""
        return self.topic_commands_bulk or bulk_topic_for(self.topic_commands)

    @cached_property
    def database_dsn(self) -> str:
        return self.database_url.get_secret_value()

    @cached_property
    def redis_dsn(self) -> str:
        return self.redis_url.get_secret_value()


def bulk_topic_for(live_topic: str) -> str:
    """The bulk lane's topic beside `live_topic`: `.bulk` before a trailing version
    (`optout.commands.v1` -> `optout.commands.bulk.v1`), else appended."""
    stem, dot, version = live_topic.rpartition(".")
    if dot and re.fullmatch(r"v[0-9]+", version):
        return f"{stem}.bulk.{version}"
    return f"{live_topic}.bulk"


def load_settings(command: str = "optout") -> Settings:
    """The settings from the environment; an invalid one ends the process with one line
    per setting, naming it and why, never its value (it may be a secret)."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = "OPTOUT_" + "_".join(str(part) for part in error["loc"]).upper()
            reason = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{command}: {name} {reason}")
        raise SystemExit("\n".join(lines)) from None
