-- SMS keywords: START undoes STOP (the `restore` action, domain/sms_restore.py).
--
-- A restore is kept as a rule under topic `#restore` on channel `sms`, and every statement
-- about all SMS other than a keyword stop (an opt-out of `*` on `sms` made through `sms`)
-- is also kept under topic `#kept`, so a restore can return to it after a STOP replaced it
-- in the (`*`, `sms`) row. The history records restores as they were made (`*`, `sms`).
ALTER TABLE rules DROP CONSTRAINT rules_action_check;
ALTER TABLE rules ADD CONSTRAINT rules_action_check
    CHECK (action IN ('opt_out', 'opt_in', 'restore'));

ALTER TABLE consent_history DROP CONSTRAINT consent_history_action_check;
ALTER TABLE consent_history ADD CONSTRAINT consent_history_action_check
    CHECK (action IN ('opt_out', 'opt_in', 'restore', 'link', 'unlink', 'merge', 'erase'));

-- What a restore returns to, for the statements made before this release: the latest
-- all-SMS statement other than a keyword stop, from the stored rules and from the consent
-- history (which still holds a statement a STOP replaced in the rules). Forwards and erased
-- subjects have no rules of their own to keep. One scan of the history, once.
INSERT INTO rules (tenant, subject_id, topic, channel, action, occurred_at, source_channel,
                   command_id)
SELECT DISTINCT ON (c.tenant, c.subject_id)
       c.tenant, c.subject_id, '#kept', 'sms', c.action, c.occurred_at, c.source_channel,
       c.command_id
FROM (
    SELECT r.tenant, r.subject_id, r.action, r.occurred_at, r.source_channel, r.command_id
    FROM rules r
    WHERE r.topic = '*' AND r.channel = 'sms'
      AND NOT (r.action = 'opt_out' AND r.source_channel = 'sms')
    UNION ALL
    SELECT h.tenant, h.subject_id, h.action, h.occurred_at, h.source_channel, h.command_id
    FROM consent_history h
    JOIN subjects s ON s.tenant = h.tenant AND s.subject_id = h.subject_id
    WHERE h.topic = '*' AND h.channel = 'sms' AND h.action IN ('opt_out', 'opt_in')
      AND NOT (h.action = 'opt_out' AND h.source_channel = 'sms')
      AND s.merged_into IS NULL AND s.erased_at IS NULL
) c
ORDER BY c.tenant, c.subject_id, c.occurred_at DESC, (c.action = 'opt_out') DESC,
         c.command_id COLLATE "C" DESC
ON CONFLICT DO NOTHING;
