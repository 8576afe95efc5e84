-- ana-pg migration 2: a number of its own for every claim, which the attempt's finish checks
-- besides the attempt. A record deleted once it expired and created again counts its attempts
-- from 1 again; the claim number (the claim's transaction id, never given twice) tells its
-- holder from an earlier one.
-- `{schema}` is replaced by the repository's (validated, quoted) schema name.

ALTER TABLE {schema}.tracked_operations ADD COLUMN claim bigint;
