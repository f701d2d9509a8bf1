-- Revoked page links: a deny list by token id, checked each time a link is used. A row is
-- kept for good (a few bytes per revoked link); a revoked link stays refused even after
-- its key is rotated back in.
CREATE TABLE revoked_links (
    token_id    text        PRIMARY KEY CHECK (token_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    revoked_by  text        NOT NULL
);

-- The proof-of-consent export reads a page in (effective_at, id) order under each name of
-- the subject: with these indexes each name's rows come out in that order, so a page reads
-- at most `limit` rows per name and per index, however long the history has grown.
CREATE INDEX consent_history_subject_page
    ON consent_history (tenant, subject_id, effective_at, id);
CREATE INDEX consent_history_addressed_page
    ON consent_history (tenant, addressed_as, effective_at, id) WHERE addressed_as IS NOT NULL;
CREATE INDEX consent_history_related_page
    ON consent_history (tenant, related, effective_at, id) WHERE related IS NOT NULL;
DROP INDEX consent_history_addressed;
DROP INDEX consent_history_related;
-- Its (tenant, subject_id) prefix serves every lookup the older index served.
DROP INDEX consent_history_subject;
