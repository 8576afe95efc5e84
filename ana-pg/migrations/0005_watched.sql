-- ana-pg migration 5: whether a call waits on the record.
-- A finish notifies the record's channel only when `watched` is set: a transaction that
-- notified commits under Postgres' global notify-queue lock, so notifying on every finish
-- serialises the commits of all finishes. A waiting call sets `watched` on the Running record
-- after it started listening; a record created fresh starts unwatched.
-- Every statement is a no-op when run again.
-- `{schema}` is replaced by the repository's (validated, quoted) schema name.

ALTER TABLE {schema}.tracked_operations
    ADD COLUMN IF NOT EXISTS watched boolean NOT NULL DEFAULT false;
