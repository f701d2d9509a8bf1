-- A batch's load in one round trip (`queries.LOCK_BATCH`): create the subjects it names,
-- lock them in key order (with the pseudonyms erased identifiers would have) and return
-- their rules, then read the processed-command log for its command ids. Each statement
-- takes its own snapshot (READ COMMITTED), so the log is read once the locks are held, as
-- when the three statements were sent one by one: a slow previous owner of a partition that
-- processed the same command committed its log entry before its locks were released.
-- Rows of the lock come with part = 1, rows of the log with part = 2.
CREATE FUNCTION lock_batch(
    ensure_tenants text[], ensure_subject_ids text[],
    lock_tenants text[], lock_subject_ids text[],
    command_tenants text[], command_ids text[]
) RETURNS TABLE (
    part smallint, tenant text, subject_id text, version bigint, merged_into text,
    erased_at timestamptz, now timestamptz, topic text, channel text, action text,
    occurred_at timestamptz, source_channel text, command_id text, content_hash text,
    source_topic text, source_partition integer, source_offset bigint, outcome text
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO subjects (tenant, subject_id)
    SELECT t, s FROM unnest(ensure_tenants, ensure_subject_ids) AS u(t, s)
    ORDER BY t, s
    ON CONFLICT DO NOTHING;

    RETURN QUERY
    WITH locked AS (
        SELECT s.tenant, s.subject_id, s.version, s.merged_into, s.erased_at
        FROM subjects s
        JOIN unnest(lock_tenants, lock_subject_ids) AS u(t, sid)
          ON s.tenant = u.t AND s.subject_id = u.sid
        ORDER BY s.tenant, s.subject_id
        FOR UPDATE OF s
    )
    SELECT 1::smallint, l.tenant, l.subject_id, l.version, l.merged_into, l.erased_at,
           clock_timestamp(), r.topic, r.channel, r.action, r.occurred_at, r.source_channel,
           r.command_id, NULL::text, NULL::text, NULL::integer, NULL::bigint, NULL::text
    FROM locked l
    LEFT JOIN rules r ON r.tenant = l.tenant AND r.subject_id = l.subject_id;

    RETURN QUERY
    SELECT 2::smallint, p.tenant, p.subject_id, NULL::bigint, NULL::text, NULL::timestamptz,
           NULL::timestamptz, NULL::text, NULL::text, NULL::text, NULL::timestamptz,
           NULL::text, p.command_id, p.content_hash, p.source_topic, p.source_partition,
           p.source_offset, p.outcome::text
    FROM processed_commands p
    JOIN unnest(command_tenants, command_ids) AS u(t, cid)
      ON p.tenant = u.t AND p.command_id = u.cid;
END;
$$;
