-- Erasure leaves nothing to brute-force (service/domain/keyed_hashes.py). Content hashes and
-- import command ids are keyed from now on; at an erasure, those of the erased person's rows
-- that were written before (plain SHA-256 over the identifier and fields that survive) are
-- replaced by their keyed forms (queries.REKEY_ERASED). The consent history stays
-- append-only: an erased row may in addition have a plain import id (`import-` and 64 hex)
-- replaced by its keyed form (`import-k1-` and 64 hex), nothing else.
--
-- Both allowed updates compare every column but those they may change, whatever columns
-- later migrations add (to_jsonb of the row minus those names).
CREATE OR REPLACE FUNCTION consent_history_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    personal CONSTANT text[] := ARRAY['subject_id', 'addressed_as', 'related', 'source_ip',
                                      'source_user_agent', 'reason', 'erased_at'];
BEGIN
    -- Erasure: once, it removes the personal fields and replaces identifiers by hashes.
    IF OLD.erased_at IS NULL AND NEW.erased_at IS NOT NULL
       AND NEW.source_ip IS NULL AND NEW.source_user_agent IS NULL AND NEW.reason IS NULL
       AND to_jsonb(NEW) - personal = to_jsonb(OLD) - personal
    THEN
        RETURN NEW;
    END IF;
    -- An erased row's import id of before keying becomes its keyed form.
    IF OLD.erased_at IS NOT NULL
       AND OLD.command_id ~ '^import-[0-9a-f]{64}$'
       AND NEW.command_id ~ '^import-k1-[0-9a-f]{64}$'
       AND to_jsonb(NEW) - 'command_id' = to_jsonb(OLD) - 'command_id'
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'consent_history is append-only (erasure may only remove personal fields)';
END;
$$;

-- `text` with each of `olds` replaced by the `news` at the same place, in order: an event's
-- payload may name several import ids (one per rule it lists).
CREATE FUNCTION replace_each(subject text, olds text[], news text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    result text := subject;
BEGIN
    FOR k IN 1 .. coalesce(array_length(olds, 1), 0) LOOP
        result := replace(result, olds[k], news[k]);
    END LOOP;
    RETURN result;
END;
$$;
