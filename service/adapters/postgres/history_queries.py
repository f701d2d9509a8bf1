"""The SQL of the proof-of-consent export (`history_reader.py`): read-only, parametrized.

Every value is bound as a parameter; nothing is built from input.
"""

FIND_SUBJECTS = """
SELECT subject_id, merged_into, erased_at
FROM subjects
WHERE tenant = $1 AND subject_id = ANY($2::text[])
"""

# The subject and every id forwarding to it (one hop in storage, up to 8 when a re-point
# races this read), then their rows through the three indexes that name an id: recorded
# under it (consent_history_subject_page), addressed as it (consent_history_addressed_page)
# or naming it as the identifier linked or the subject merged (consent_history_related_page).
# Keyset pagination on (effective_at, id): rows are immutable in both, so a row is on exactly
# one page however many rows are appended meanwhile. Each name and index is read in that
# order from the cursor on and stops after `limit` rows (a LATERAL subquery with its own
# LIMIT, an index range scan), so a page reads at most 3 x names x limit index entries and
# sorts only those, never the subject's whole history.
HISTORY_PAGE = """
WITH RECURSIVE names (subject_id, depth) AS (
    SELECT $2::text, 0
    UNION
    SELECT s.subject_id, n.depth + 1
    FROM names n
    JOIN subjects s ON s.tenant = $1 AND s.merged_into = n.subject_id
    WHERE n.depth < 8
),
named AS (
    SELECT DISTINCT subject_id AS name FROM names
),
-- The first page starts before any row: a plain row comparison, usable as an index bound
-- in a generic plan too (an `IS NULL OR` would not be).
cursor AS (
    SELECT coalesce($3::timestamptz, '-infinity') AS at, coalesce($4::bigint, 0) AS id
),
matched AS (
    SELECT x.id, x.effective_at FROM named, cursor, LATERAL (
        SELECT h.id, h.effective_at FROM consent_history h
        WHERE h.tenant = $1 AND h.subject_id = named.name
          AND (h.effective_at, h.id) > (cursor.at, cursor.id)
        ORDER BY h.effective_at, h.id
        LIMIT $5
    ) x
    UNION
    SELECT x.id, x.effective_at FROM named, cursor, LATERAL (
        SELECT h.id, h.effective_at FROM consent_history h
        WHERE h.tenant = $1 AND h.addressed_as IS NOT NULL AND h.addressed_as = named.name
          AND (h.effective_at, h.id) > (cursor.at, cursor.id)
        ORDER BY h.effective_at, h.id
        LIMIT $5
    ) x
    UNION
    SELECT x.id, x.effective_at FROM named, cursor, LATERAL (
        SELECT h.id, h.effective_at FROM consent_history h
        WHERE h.tenant = $1 AND h.related IS NOT NULL AND h.related = named.name
          AND (h.effective_at, h.id) > (cursor.at, cursor.id)
        ORDER BY h.effective_at, h.id
        LIMIT $5
    ) x
),
page AS (
    SELECT id, effective_at FROM matched ORDER BY effective_at, id LIMIT $5
)
SELECT h.id, h.subject_id, h.addressed_as, h.command_id, h.action, h.topic, h.channel,
       h.related, h.occurred_at, h.effective_at, h.source_channel, h.source_app,
       h.source_ip, h.source_user_agent, h.reason, h.erased_at, h.actor
FROM page p
JOIN consent_history h ON h.id = p.id
ORDER BY p.effective_at, p.id
"""
