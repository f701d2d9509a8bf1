"""Every SQL statement of the command pipeline, set-based: one round trip per step per batch.

Arrays are bound as parameters and expanded with ``unnest``; nothing is built from input.
"""

# Row locks in a fixed order: a slow previous owner of a partition and its new owner
# serialise on the subject instead of interleaving their writes (or deadlocking). The rules
# come back in the same round trip; a subject without rules gives one row of NULLs.
LOCK_SUBJECTS_WITH_RULES = """
WITH locked AS (
    SELECT s.tenant, s.subject_id, s.version, s.merged_into, s.erased_at
    FROM subjects s
    JOIN unnest($1::text[], $2::text[]) AS u(t, sid) ON s.tenant = u.t AND s.subject_id = u.sid
    ORDER BY s.tenant, s.subject_id
    FOR UPDATE OF s
)
SELECT l.tenant, l.subject_id, l.version, l.merged_into, l.erased_at,
       clock_timestamp() AS now,
       r.topic, r.channel, r.action, r.occurred_at, r.source_channel, r.command_id
FROM locked l
LEFT JOIN rules r ON r.tenant = l.tenant AND r.subject_id = l.subject_id
"""

# A batch's load in one round trip (the function is migration 0006_lock_batch.sql): create
# the named subjects, lock them (and the pseudonyms) in key order with their rules, as
# LOCK_SUBJECTS_WITH_RULES does, then read the processed log as LOAD_PROCESSED does, each
# statement with its own snapshot. The lock's rows come with part = 1, the log's with 2.
LOCK_BATCH = """
SELECT * FROM lock_batch($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
"""

# Every id forwarding to the given subjects, locked: an erasure erases them all.
LOCK_FORWARDERS = """
SELECT s.tenant, s.subject_id, s.version, s.merged_into, s.erased_at,
       NULL::text AS topic, NULL::text AS channel, NULL::text AS action,
       NULL::timestamptz AS occurred_at, NULL::text AS source_channel, NULL::text AS command_id
FROM subjects s
JOIN unnest($1::text[], $2::text[]) AS u(t, sid) ON s.tenant = u.t AND s.merged_into = u.sid
ORDER BY s.tenant, s.subject_id
FOR UPDATE OF s
"""

NOW = "SELECT clock_timestamp()"

# Outcomes and event payloads come back as the stored text: a redelivered record's answer
# is published again byte for byte.
LOAD_PROCESSED = """
SELECT p.tenant, p.command_id, p.content_hash, p.source_topic, p.source_partition,
       p.source_offset, p.outcome
FROM processed_commands p
JOIN unnest($1::text[], $2::text[]) AS u(t, cid) ON p.tenant = u.t AND p.command_id = u.cid
"""

LOAD_EVENTS_OF_COMMANDS = """
SELECT e.tenant, e.command_id, e.subject_id, e.version, e.payload::text AS payload
FROM preference_events e
JOIN unnest($1::text[], $2::text[]) AS u(t, cid) ON e.tenant = u.t AND e.command_id = u.cid
ORDER BY e.tenant, e.subject_id, e.version
"""

# Every write of a batch in one statement (one round trip): each part reads its rows from
# a json array (plain json: PostgreSQL parses it faster than jsonb), which orjson builds far
# faster than the driver encodes typed arrays. The documents the service encoded itself (an
# event's payload, an outcome) come beside it as text arrays, zipped row by row with
# ROWS FROM: nested in the array they were parsed twice, once in the array and once as a
# value; both are stored as text, never parsed on the way in (an outcome is parsed only
# when a resend under the same id conflicts with it).
# The rules upsert re-checks last-writer-wins in SQL, so it is correct even without the
# row locks; a stored rejection may be replaced (a producer can fix and resend a command
# under the same id), an applied or unchanged answer is final.
STORE_BATCH = """
WITH
upsert_rules AS (
    INSERT INTO rules (tenant, subject_id, topic, channel, action, occurred_at,
                       source_channel, command_id)
    SELECT tenant, subject_id, topic, channel, action, occurred_at, source_channel, command_id
    FROM json_to_recordset($1::json) AS x(
        tenant text, subject_id text, topic text, channel text, action text,
        occurred_at timestamptz, source_channel text, command_id text)
    ON CONFLICT (tenant, subject_id, topic, channel) DO UPDATE
    SET action = EXCLUDED.action,
        occurred_at = EXCLUDED.occurred_at,
        source_channel = EXCLUDED.source_channel,
        command_id = EXCLUDED.command_id,
        updated_at = now()
    WHERE (rules.occurred_at, rules.action = 'opt_out', rules.command_id COLLATE "C")
        < (EXCLUDED.occurred_at, EXCLUDED.action = 'opt_out', EXCLUDED.command_id COLLATE "C")
),
bump_versions AS (
    UPDATE subjects s
    SET version = x.version, merged_into = x.merged_into,
        erased_at = CASE WHEN x.erased THEN coalesce(s.erased_at, now()) END,
        updated_at = now()
    FROM json_to_recordset($2::json) AS x(
        tenant text, subject_id text, version bigint, merged_into text, erased boolean)
    WHERE s.tenant = x.tenant AND s.subject_id = x.subject_id AND s.version < x.version
),
history AS (
    INSERT INTO consent_history (tenant, subject_id, command_id, action, topic, channel,
                                 occurred_at, effective_at, source_channel, source_app,
                                 source_ip, source_user_agent, reason, addressed_as, related,
                                 actor)
    SELECT tenant, subject_id, command_id, action, topic, channel, occurred_at, effective_at,
           source_channel, source_app, source_ip, source_user_agent, reason, addressed_as,
           related, actor
    FROM json_to_recordset($3::json) AS x(
        tenant text, subject_id text, command_id text, action text, topic text, channel text,
        occurred_at timestamptz, effective_at timestamptz, source_channel text,
        source_app text, source_ip text, source_user_agent text, reason text,
        addressed_as text, related text, actor text)
),
events AS (
    INSERT INTO preference_events (tenant, subject_id, version, command_id, event_id,
                                   effective_at, payload)
    SELECT tenant, subject_id, version, command_id, event_id, effective_at, payload
    FROM ROWS FROM (
        json_to_recordset($4::json) AS (
            tenant text, subject_id text, version bigint, command_id text, event_id uuid,
            effective_at timestamptz),
        unnest($6::text[])
    ) AS x(tenant, subject_id, version, command_id, event_id, effective_at, payload)
    ON CONFLICT DO NOTHING
),
processed AS (
    INSERT INTO processed_commands (command_id, content_hash, tenant, subject_id,
                                    source_topic, source_partition, source_offset, outcome)
    SELECT command_id, content_hash, tenant, subject_id, source_topic, source_partition,
           source_offset, outcome
    FROM ROWS FROM (
        json_to_recordset($5::json) AS (
            command_id text, content_hash text, tenant text, subject_id text,
            source_topic text, source_partition integer, source_offset bigint),
        unnest($7::text[])
    ) AS x(command_id, content_hash, tenant, subject_id, source_topic, source_partition,
           source_offset, outcome)
    ON CONFLICT (tenant, command_id) DO UPDATE
    SET content_hash = EXCLUDED.content_hash,
        tenant = EXCLUDED.tenant,
        subject_id = EXCLUDED.subject_id,
        source_topic = EXCLUDED.source_topic,
        source_partition = EXCLUDED.source_partition,
        source_offset = EXCLUDED.source_offset,
        outcome = EXCLUDED.outcome,
        processed_at = now()
    WHERE processed_commands.outcome::json ->> 'status' = 'rejected'
)
SELECT 1
"""

# Identity changes, before STORE_BATCH: the rule sets rewritten whole are emptied (the
# batch's final rules of those subjects are then inserted by STORE_BATCH), and the rows of
# erased identifiers' suppressions are created.
IDENTITY_BEFORE = """
WITH
cleared AS (
    DELETE FROM rules r
    USING unnest($1::text[], $2::text[]) AS u(t, sid)
    WHERE r.tenant = u.t AND r.subject_id = u.sid
)
INSERT INTO subjects (tenant, subject_id)
SELECT t, sid FROM unnest($3::text[], $4::text[]) AS u(t, sid)
ORDER BY t, sid
ON CONFLICT DO NOTHING
"""

# Identity changes, after STORE_BATCH (so the batch's own rows are covered): forwards are
# re-pointed to the end of their chain; each erased id's consent history loses its
# personal fields (identifiers in clear become their keyed hashes, other identifiers are
# removed), the processed log names the hash, and an erased identifier's row and events
# are deleted. $1: json [{tenant, old, new}]; $2: json [{tenant, name, replacement,
# erased_at, command_id}] with every id of each erased person, the hashes included; the
# erasure's own tombstones stay until published (FORGET_TOMBSTONES).
IDENTITY_AFTER = """
WITH
repoint AS (
    UPDATE subjects s SET merged_into = x.new, updated_at = now()
    FROM json_to_recordset($1::json) AS x(tenant text, old text, new text)
    WHERE s.tenant = x.tenant AND s.merged_into = x.old AND s.subject_id <> x.new
),
m AS (
    SELECT * FROM json_to_recordset($2::json)
        AS x(tenant text, name text, replacement text, erased_at timestamptz,
             command_id text)
),
history AS (
    UPDATE consent_history h
    SET subject_id = m.replacement,
        addressed_as = CASE
            WHEN h.addressed_as IS NULL THEN NULL
            ELSE coalesce(
                (SELECT m2.replacement FROM m m2
                 WHERE m2.tenant = h.tenant AND m2.name = h.addressed_as),
                CASE WHEN h.addressed_as ~ '^(email|phone|device):' THEN NULL
                     ELSE h.addressed_as END)
        END,
        related = CASE
            WHEN h.related IS NULL THEN NULL
            ELSE coalesce(
                (SELECT m2.replacement FROM m m2
                 WHERE m2.tenant = h.tenant AND m2.name = h.related),
                CASE WHEN h.related ~ '^(email|phone|device):' THEN NULL
                     ELSE h.related END)
        END,
        source_ip = NULL, source_user_agent = NULL, reason = NULL,
        erased_at = m.erased_at
    FROM m
    WHERE h.tenant = m.tenant AND h.subject_id = m.name AND h.erased_at IS NULL
),
processed AS (
    UPDATE processed_commands p
    SET subject_id = m.replacement,
        outcome = (p.outcome::jsonb || jsonb_build_object('subject_id', m.replacement)
                   || CASE WHEN p.outcome::json ->> 'applied_to' ~ '^(email|phone|device):'
                           THEN jsonb_build_object('applied_to', coalesce(
                               (SELECT m2.replacement FROM m m2
                                WHERE m2.tenant = p.tenant
                                  AND m2.name = p.outcome::json ->> 'applied_to'), 'erased'))
                           ELSE '{}'::jsonb END)::text
    FROM m
    WHERE p.tenant = m.tenant AND p.subject_id = m.name AND m.name <> m.replacement
),
events AS (
    DELETE FROM preference_events e
    USING m
    WHERE e.tenant = m.tenant AND e.subject_id = m.name AND m.name <> m.replacement
      AND NOT (e.payload IS NULL AND e.command_id = m.command_id)
)
DELETE FROM subjects s
USING m
WHERE s.tenant = m.tenant AND s.subject_id = m.name AND m.name <> m.replacement
"""

# Rows the load created for ids that turned out to stand for an erased identifier.
DISCARD_SUBJECTS = """
DELETE FROM subjects s
USING unnest($1::text[], $2::text[]) AS u(t, sid)
WHERE s.tenant = u.t AND s.subject_id = u.sid AND s.version = 0 AND s.merged_into IS NULL
"""

# An erased identifier's tombstone, stored so a redelivery could publish it again, holds the
# identifier in clear: once Kafka has it, it goes (the erasure already deleted the id's row).
FORGET_TOMBSTONES = """
DELETE FROM preference_events e
USING unnest($1::text[], $2::text[]) AS u(t, sid)
WHERE e.tenant = u.t AND e.subject_id = u.sid AND e.payload IS NULL
  AND NOT EXISTS (SELECT 1 FROM subjects s WHERE s.tenant = u.t AND s.subject_id = u.sid)
"""

# The read path's cache misses: never locks, one round trip for any number of subjects;
# an unknown subject simply has no row. $2 holds the asked ids and, for identifiers, the
# pseudonyms their suppression would have if erased. $3 lists tenants to report (one row
# with a NULL subject_id) when they hold any erased subject: asked when no identifier key
# is configured, so an identifier without a row may be an erased one (index subjects_erased).
LOAD_STATES = """
SELECT s.tenant, s.subject_id, s.version, s.merged_into, s.erased_at IS NOT NULL AS erased,
       r.topic, r.channel, r.action, r.occurred_at, r.source_channel, r.command_id
FROM subjects s
JOIN unnest($1::text[], $2::text[]) AS u(t, sid) ON s.tenant = u.t AND s.subject_id = u.sid
LEFT JOIN rules r ON r.tenant = s.tenant AND r.subject_id = s.subject_id
UNION ALL
SELECT e.t, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM unnest($3::text[]) AS e(t)
WHERE EXISTS (SELECT 1 FROM subjects x WHERE x.tenant = e.t AND x.erased_at IS NOT NULL)
"""

# Erasure, after IDENTITY_AFTER: the hashes of before keying in the erased person's rows
# (keyed_hashes.py). $1, $2: every id of each erased person and what replaced it. Processed
# commands with a plain content hash or a plain import id (part 1); plain import ids in the
# consent history and the events (part 2). Both by index (tenant, subject_id).
UNKEYED_OF_ERASED = """
WITH m AS (
    SELECT DISTINCT t, sid FROM unnest($1::text[], $2::text[]) AS u(t, sid)
)
SELECT 1 AS part, p.tenant, p.command_id, p.content_hash
FROM processed_commands p JOIN m ON p.tenant = m.t AND p.subject_id = m.sid
WHERE p.content_hash !~ '^k1:' OR p.command_id ~ '^import-[0-9a-f]{64}$'
UNION
SELECT 2, h.tenant, h.command_id, NULL
FROM consent_history h JOIN m ON h.tenant = m.t AND h.subject_id = m.sid
WHERE h.command_id ~ '^import-[0-9a-f]{64}$'
UNION
SELECT 2, e.tenant, x.id[1], NULL
FROM preference_events e JOIN m ON e.tenant = m.t AND e.subject_id = m.sid,
     regexp_matches(e.payload, '"(import-[0-9a-f]{64})"', 'g') AS x(id)
WHERE e.payload IS NOT NULL
"""

# Erasure: those hashes replaced by their keyed forms, in the same rows. $1, $2: the erased
# person's ids (as in UNKEYED_OF_ERASED); $3: json [{tenant, command_id, new_id, new_hash}]
# per processed command; $4: json [{tenant, old, new}] per import id. A processed command
# whose keyed id is already logged (the same row imported again since) is dropped: the
# logged one answers a redelivery from then on.
REKEY_ERASED = """
WITH
m AS (SELECT DISTINCT t, sid FROM unnest($1::text[], $2::text[]) AS u(t, sid)),
p AS (
    SELECT * FROM json_to_recordset($3::json)
        AS x(tenant text, command_id text, new_id text, new_hash text)
),
i AS (SELECT * FROM json_to_recordset($4::json) AS x(tenant text, old text, new text)),
dropped AS (
    DELETE FROM processed_commands c
    USING p
    WHERE c.tenant = p.tenant AND c.command_id = p.command_id AND p.new_id <> p.command_id
      AND EXISTS (SELECT 1 FROM processed_commands q
                  WHERE q.tenant = p.tenant AND q.command_id = p.new_id)
),
processed AS (
    UPDATE processed_commands c
    SET command_id = p.new_id, content_hash = p.new_hash,
        outcome = CASE WHEN p.new_id = p.command_id THEN c.outcome
                       ELSE (c.outcome::jsonb || jsonb_build_object('command_id', p.new_id))::text
                  END
    FROM p
    WHERE c.tenant = p.tenant AND c.command_id = p.command_id
      AND (p.new_id = p.command_id
           OR NOT EXISTS (SELECT 1 FROM processed_commands q
                          WHERE q.tenant = p.tenant AND q.command_id = p.new_id))
),
history AS (
    UPDATE consent_history h SET command_id = i.new
    FROM m, i
    WHERE h.tenant = m.t AND h.subject_id = m.sid AND h.tenant = i.tenant
      AND h.command_id = i.old
),
rules AS (
    UPDATE rules r SET command_id = i.new
    FROM m, i
    WHERE r.tenant = m.t AND r.subject_id = m.sid AND r.tenant = i.tenant
      AND r.command_id = i.old
)
UPDATE preference_events e
SET command_id = coalesce(
        (SELECT i.new FROM i WHERE i.tenant = e.tenant AND i.old = e.command_id), e.command_id),
    payload = replace_each(
        e.payload,
        ARRAY(SELECT '"' || i.old || '"' FROM i WHERE i.tenant = e.tenant ORDER BY i.old),
        ARRAY(SELECT '"' || i.new || '"' FROM i WHERE i.tenant = e.tenant ORDER BY i.old)
    )
FROM m
WHERE e.tenant = m.t AND e.subject_id = m.sid
  AND EXISTS (SELECT 1 FROM i WHERE i.tenant = e.tenant
              AND (i.old = e.command_id OR strpos(e.payload, i.old) > 0))
"""
