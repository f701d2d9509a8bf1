-- Provenance: the credential or channel that carried each change (an API token's name,
-- `optout-pages`, `sms-inbound`, `import:<file>`, `kafka`), set by the service. Rows written
-- before it was recorded keep NULL: unknown, never guessed.
ALTER TABLE consent_history ADD COLUMN actor text;

-- Erasure may still only remove personal fields: the actor is proof of consent and stays.
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
       AND NEW.actor IS NOT DISTINCT FROM OLD.actor
       AND NEW.recorded_at = OLD.recorded_at
       AND NEW.source_ip IS NULL AND NEW.source_user_agent IS NULL AND NEW.reason IS NULL
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'consent_history is append-only (erasure may only remove personal fields)';
END;
$$;
