-- An event's payload is the document the service encoded and published, stored so a
-- redelivery or a republish sends it again byte for byte; PostgreSQL never looks inside it.
-- As text it is stored without being parsed on the way in, which as json it was, on every
-- command's hot path.
ALTER TABLE preference_events ALTER COLUMN payload TYPE text USING payload::text;
