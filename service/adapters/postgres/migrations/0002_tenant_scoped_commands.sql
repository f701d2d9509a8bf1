-- Contract v1 correction: a command id is unique per tenant. One tenant's id no longer
-- blocks another's, and a `duplicate` never reveals another tenant's version or time.
ALTER TABLE processed_commands DROP CONSTRAINT processed_commands_pkey;
ALTER TABLE processed_commands ADD PRIMARY KEY (tenant, command_id);

DROP INDEX preference_events_command;
CREATE INDEX preference_events_command ON preference_events (tenant, command_id);

-- Last-writer-wins breaks a full tie on the command id, compared by code point as the
-- domain compares Python strings; the database's collation might order them otherwise.
ALTER TABLE rules ALTER COLUMN command_id TYPE text COLLATE "C";
