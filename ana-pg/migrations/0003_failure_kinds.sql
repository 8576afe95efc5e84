-- ana-pg migration 3: the kind of a failure beside its message, and no result for a run whose
-- result could not be encoded.
-- `failure` holds a `FailureKind` name while `error` holds a message. Rows written before get
-- the kind their message stood for (the messages below are the ones ana-pg wrote for those
-- kinds; `Got panic "…"` is a panic; any other message is the operation's own error).
-- A Finished row whose result is the marker ana-pg stored for a result the codec refused
-- loses it: a Finished row without a result is what stands for such a run.
-- Every statement is a no-op when run again.
-- `{schema}` is replaced by the repository's (validated, quoted) schema name.

ALTER TABLE {schema}.tracked_operations ADD COLUMN IF NOT EXISTS failure text
    CONSTRAINT tracked_operations_failure_check CHECK (failure IN
        ('error', 'panic', 'cancelled', 'timed_out', 'expired', 'begin_failed', 'commit_failed'));

UPDATE {schema}.tracked_operations
SET failure = CASE
        WHEN error = 'Operation cancelled before it finished.' THEN 'cancelled'
        WHEN error = 'Operation timed out before it finished.' THEN 'timed_out'
        WHEN error = 'Operation expired before it finished.' THEN 'expired'
        WHEN error = 'The operation''s transaction could not be opened.' THEN 'begin_failed'
        WHEN error = 'The operation''s transaction could not be committed.' THEN 'commit_failed'
        WHEN starts_with(error, 'Got panic "') THEN 'panic'
        ELSE 'error'
    END
WHERE failure IS NULL AND (error IS NOT NULL OR status = 'failed');

UPDATE {schema}.tracked_operations
SET result = NULL
WHERE status = 'finished'
  AND result = decode(
      'ff616e613a2074686520726573756c7420636f756c64206e6f7420626520656e636f646564ff', 'hex');
