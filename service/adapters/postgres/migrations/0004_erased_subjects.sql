-- The read path, run without an identifier key, must tell whether a tenant has erased
-- subjects before it answers the default for an identifier it has no row for (it may be
-- an erased one, whose suppression it cannot find without the key). Partial: it holds
-- only erased subjects, so the question costs one index probe whatever the tenant's size.
CREATE INDEX subjects_erased ON subjects (tenant) WHERE erased_at IS NOT NULL;
