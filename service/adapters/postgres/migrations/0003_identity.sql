-- Identity: identifiers linked to subjects, merges, erasure with suppression.
--
-- A subject id may forward to another subject: an identifier (`email:…`, `phone:…`,
-- `device:…`) linked to a subject, or a subject merged into another. Commands and checks
-- addressed to it apply to `merged_into`. Forwards are kept one hop deep: a merge re-points
-- every id that forwarded to the subject merged away.
ALTER TABLE subjects ADD COLUMN merged_into text;
CREATE INDEX subjects_forwarded_to ON subjects (tenant, merged_into)
    WHERE merged_into IS NOT NULL;

-- Set once a subject is erased. An erased identifier's row is replaced by one whose id is
-- `erased:` and a keyed hash (HMAC) of the identifier: a suppression that a later command
-- or check for the same identifier finds, with no identifier in clear.
ALTER TABLE subjects ADD COLUMN erased_at timestamptz;

-- The consent history records identity changes too, so a merged or erased subject's proof
-- of consent stays complete.
ALTER TABLE consent_history DROP CONSTRAINT consent_history_action_check;
ALTER TABLE consent_history ADD CONSTRAINT consent_history_action_check
    CHECK (action IN ('opt_out', 'opt_in', 'link', 'unlink', 'merge', 'erase'));
ALTER TABLE consent_history ALTER COLUMN topic DROP NOT NULL;
ALTER TABLE consent_history ALTER COLUMN channel DROP NOT NULL;
-- The id the command named, when it forwarded to `subject_id` (an identifier, a merged id).
ALTER TABLE consent_history ADD COLUMN addressed_as text;
-- link / unlink: the identifier; merge: the subject merged into this one.
ALTER TABLE consent_history ADD COLUMN related text;
-- When the row's personal fields (ip, user agent, reason, identifiers in clear) were erased.
ALTER TABLE consent_history ADD COLUMN erased_at timestamptz;

-- Append-only, with one exception: erasure. It may set `erased_at` once, null the personal
-- fields and replace identifiers in clear by their keyed hashes; everything else (what,
-- when, from which channel and app, the command id) stays as the proof of consent.
CREATE OR REPLACE FUNCTION consent_history_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.erased_at IS NULL AND NEW.erased_at IS NOT NULL
       AND NEW.id = OLD.id AND NEW.tenant = OLD.tenant
       AND NEW.command_id = OLD.command_id AND NEW.action = OLD.action
       AND NEW.topic IS NOT DISTINCT FROM OLD.topic
       AND NEW.channel IS NOT DISTINCT FROM OLD.channel
       AND NEW.occurred_at = OLD.occurred_at AND NEW.effective_at = OLD.effective_at
       AND NEW.source_channel = OLD.source_channel
       AND NEW.source_app IS NOT DISTINCT FROM OLD.source_app
       AND NEW.recorded_at = OLD.recorded_at
       AND NEW.source_ip IS NULL AND NEW.source_user_agent IS NULL AND NEW.reason IS NULL
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'consent_history is append-only (erasure may only remove personal fields)';
END;
$$;
CREATE INDEX consent_history_addressed ON consent_history (tenant, addressed_as, id)
    WHERE addressed_as IS NOT NULL;
CREATE INDEX consent_history_related ON consent_history (tenant, related)
    WHERE related IS NOT NULL;

-- A tombstone (a merged-away or erased subject's key, value null on the compacted topic)
-- is stored like any event, so a crash redelivery publishes it again.
ALTER TABLE preference_events ALTER COLUMN payload DROP NOT NULL;

-- The processed log and the events name the subject as addressed; erasure rewrites them.
CREATE INDEX processed_commands_subject ON processed_commands (tenant, subject_id);
