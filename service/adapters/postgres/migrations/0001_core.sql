-- Core tables of contract v1: current rules, subject versions, processed-command log,
-- consent history (the proof of consent) and the event log that doubles as the outbox.

CREATE TABLE subjects (
    tenant      text        NOT NULL,
    subject_id  text        NOT NULL,
    version     bigint      NOT NULL DEFAULT 0 CHECK (version >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, subject_id)
);

CREATE TABLE rules (
    tenant          text        NOT NULL,
    subject_id      text        NOT NULL,
    topic           text        NOT NULL,
    channel         text        NOT NULL,
    action          text        NOT NULL CHECK (action IN ('opt_out', 'opt_in')),
    occurred_at     timestamptz NOT NULL,
    source_channel  text        NOT NULL,
    command_id      text        NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- No foreign key to subjects: every write creates and locks the subject row first in
    -- the same transaction, and the per-row check cost a quarter of the batch write.
    PRIMARY KEY (tenant, subject_id, topic, channel)
);

-- One row per command id: the idempotency key. The delivery (topic, partition, offset)
-- tells a redelivery after a crash (same record) from a producer's resend (new record).
CREATE TABLE processed_commands (
    command_id        text        PRIMARY KEY,
    content_hash      text        NOT NULL,
    tenant            text        NOT NULL,
    subject_id        text,
    source_topic      text        NOT NULL,
    source_partition  integer     NOT NULL,
    source_offset     bigint      NOT NULL,
    outcome           json        NOT NULL,
    processed_at      timestamptz NOT NULL DEFAULT now()
);

-- Append-only: every applied change with who, when and how. Source ip and user agent
-- live here (the proof of consent) and nowhere else.
CREATE TABLE consent_history (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant             text        NOT NULL,
    subject_id         text        NOT NULL,
    command_id         text        NOT NULL,
    action             text        NOT NULL CHECK (action IN ('opt_out', 'opt_in')),
    topic              text        NOT NULL,
    channel            text        NOT NULL,
    occurred_at        timestamptz NOT NULL,
    effective_at       timestamptz NOT NULL,
    source_channel     text        NOT NULL,
    source_app         text,
    source_ip          text,
    source_user_agent  text,
    reason             text,
    recorded_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_history_subject ON consent_history (tenant, subject_id, id);

CREATE OR REPLACE FUNCTION consent_history_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consent_history is append-only';
END;
$$;
CREATE TRIGGER consent_history_append_only
    BEFORE UPDATE ON consent_history
    FOR EACH ROW EXECUTE FUNCTION consent_history_is_append_only();

-- Every preference-changed event, written in the same transaction as the state it
-- describes: re-published unchanged when its command's record is redelivered. Stored as
-- json (the text as published), not jsonb: it is written far more often than queried.
CREATE TABLE preference_events (
    tenant        text        NOT NULL,
    subject_id    text        NOT NULL,
    version       bigint      NOT NULL,
    command_id    text        NOT NULL,
    event_id      uuid        NOT NULL,
    effective_at  timestamptz NOT NULL,
    payload       json        NOT NULL,
    PRIMARY KEY (tenant, subject_id, version)
);
CREATE INDEX preference_events_command ON preference_events (command_id);
