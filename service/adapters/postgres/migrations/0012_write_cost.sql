-- Cost per change. The processed log's outcome is the document the service encoded and
-- published, stored so a redelivery publishes it again byte for byte: as text it is stored
-- without being parsed on every command's hot path (as the event payload since 0007). It
-- is parsed only where SQL reads inside it: a conflicting resend (is the stored answer a
-- rejection?) and an erasure's rewrite.
ALTER TABLE processed_commands ALTER COLUMN outcome TYPE text USING outcome::text;

-- Each command updates its subject's row (the version) and upserts its rules: with room
-- left on each page the new row version goes on the same page and no index entry is
-- added (a HOT update), so a large table is not written at random page by page twice.
-- Applies to pages filled from now on.
ALTER TABLE subjects SET (fillfactor = 80);
ALTER TABLE rules SET (fillfactor = 80);
