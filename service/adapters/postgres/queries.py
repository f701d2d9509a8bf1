"""Every SQL statement of the command pipeline, set-based: one round trip per step per batch.

Arrays are bound as parameters and expanded with ``unnest``; nothing is built from input.
"""

ENSURE_SUBJECTS = """
INSERT INTO subjects (tenant, subject_id)
SELECT t, s FROM unnest($1::text[], $2::text[]) AS u(t, s)
ORDER BY t, s
ON CONFLICT DO NOTHING
"""

# Row locks in a fixed order: a slow previous owner of a partition and its new owner
# serialise on the subject instead of interleaving their writes (or deadlocking).
LOCK_SUBJECTS = """
SELECT s.tenant, s.subject_id, s.version, clock_timestamp() AS now
FROM subjects s
JOIN unnest($1::text[], $2::text[]) AS u(t, sid) ON s.tenant = u.t AND s.subject_id = u.sid
ORDER BY s.tenant, s.subject_id
FOR UPDATE OF s
"""

LOAD_RULES = """
SELECT r.tenant, r.subject_id, r.topic, r.channel, r.action, r.occurred_at,
       r.source_channel, r.command_id
FROM rules r
JOIN unnest($1::text[], $2::text[]) AS u(t, sid) ON r.tenant = u.t AND r.subject_id = u.sid
"""

LOAD_PROCESSED = """
SELECT command_id, content_hash, source_topic, source_partition, source_offset, outcome
FROM processed_commands
WHERE command_id = ANY($1::text[])
"""

LOAD_EVENTS_OF_COMMANDS = """
SELECT command_id, payload
FROM preference_events
WHERE command_id = ANY($1::text[])
ORDER BY tenant, subject_id, version
"""

# The WHERE clause re-checks last-writer-wins in SQL: correct even without the row lock.
UPSERT_RULES = """
INSERT INTO rules (tenant, subject_id, topic, channel, action, occurred_at, source_channel,
                   command_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::timestamptz[], $7::text[], $8::text[])
ON CONFLICT (tenant, subject_id, topic, channel) DO UPDATE
SET action = EXCLUDED.action,
    occurred_at = EXCLUDED.occurred_at,
    source_channel = EXCLUDED.source_channel,
    command_id = EXCLUDED.command_id,
    updated_at = now()
WHERE (rules.occurred_at, rules.action = 'opt_out', rules.command_id)
    < (EXCLUDED.occurred_at, EXCLUDED.action = 'opt_out', EXCLUDED.command_id)
"""

BUMP_VERSIONS = """
UPDATE subjects s
SET version = u.version, updated_at = now()
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(t, sid, version)
WHERE s.tenant = u.t AND s.subject_id = u.sid AND s.version < u.version
"""

INSERT_HISTORY = """
INSERT INTO consent_history (tenant, subject_id, command_id, action, topic, channel,
                             occurred_at, effective_at, source_channel, source_app,
                             source_ip, source_user_agent, reason)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::timestamptz[], $8::timestamptz[], $9::text[], $10::text[],
                     $11::text[], $12::text[], $13::text[])
"""

INSERT_EVENTS = """
INSERT INTO preference_events (tenant, subject_id, version, command_id, event_id,
                               effective_at, payload)
SELECT t, sid, v, cid, eid::uuid, eff, p::jsonb
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
            $6::timestamptz[], $7::text[]) AS u(t, sid, v, cid, eid, eff, p)
ON CONFLICT DO NOTHING
"""

# A stored rejection may be replaced (a producer can fix and resend a command under the
# same id); an applied or unchanged answer is final.
UPSERT_PROCESSED = """
INSERT INTO processed_commands (command_id, content_hash, tenant, subject_id, source_topic,
                                source_partition, source_offset, outcome)
SELECT cid, h, t, sid, st, sp, so, o::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
            $7::bigint[], $8::text[]) AS u(cid, h, t, sid, st, sp, so, o)
ON CONFLICT (command_id) DO UPDATE
SET content_hash = EXCLUDED.content_hash,
    tenant = EXCLUDED.tenant,
    subject_id = EXCLUDED.subject_id,
    source_topic = EXCLUDED.source_topic,
    source_partition = EXCLUDED.source_partition,
    source_offset = EXCLUDED.source_offset,
    outcome = EXCLUDED.outcome,
    processed_at = now()
WHERE processed_commands.outcome ->> 'status' = 'rejected'
"""

MARK_PUBLISHED = """
UPDATE preference_events e
SET published_at = now()
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(t, sid, v)
WHERE e.tenant = u.t AND e.subject_id = u.sid AND e.version = u.v AND e.published_at IS NULL
"""

LOAD_SUBJECT = """
SELECT s.version, r.topic, r.channel, r.action, r.occurred_at, r.source_channel, r.command_id
FROM subjects s
LEFT JOIN rules r ON r.tenant = s.tenant AND r.subject_id = s.subject_id
WHERE s.tenant = $1 AND s.subject_id = $2
"""
