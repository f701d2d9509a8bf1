-- Retention of the processed-command log and the event log (`application/retention.py`).
-- Both tables are appended in time order, so a BRIN index finds the old rows for a fraction
-- of a B-tree's size and write cost. The consent history is never pruned: it is the proof
-- of consent.
CREATE INDEX processed_commands_processed_at ON processed_commands USING brin (processed_at);
CREATE INDEX preference_events_effective_at ON preference_events USING brin (effective_at);
