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
# under it (consent_history_subject), addressed as it (consent_history_addressed) or naming
# it as the identifier linked or the subject merged (consent_history_related). Keyset
# pagination on (effective_at, id): rows are immutable in both, so a row is on exactly one
# page however many rows are appended meanwhile. A page reads the ids of every matching row
# and keeps the first `limit` (a top-N sort): a subject has tens of rows, not millions.
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
    SELECT ARRAY(SELECT DISTINCT subject_id FROM names) AS ids
),
matched AS (
    SELECT h.id FROM consent_history h, named
    WHERE h.tenant = $1 AND h.subject_id = ANY(named.ids)
    UNION
    SELECT h.id FROM consent_history h, named
    WHERE h.tenant = $1 AND h.addressed_as IS NOT NULL AND h.addressed_as = ANY(named.ids)
    UNION
    SELECT h.id FROM consent_history h, named
    WHERE h.tenant = $1 AND h.related IS NOT NULL AND h.related = ANY(named.ids)
)
SELECT h.id, h.subject_id, h.addressed_as, h.command_id, h.action, h.topic, h.channel,
       h.related, h.occurred_at, h.effective_at, h.source_channel, h.source_app,
       h.source_ip, h.source_user_agent, h.reason, h.erased_at, h.actor
FROM consent_history h
JOIN matched m ON m.id = h.id
WHERE $3::timestamptz IS NULL OR (h.effective_at, h.id) > ($3::timestamptz, $4::bigint)
ORDER BY h.effective_at, h.id
LIMIT $5
"""
