-- ana-pg migration 1: the tracked operations table.
-- `{schema}` is replaced by the repository's (validated, quoted) schema name.

CREATE TYPE {schema}.operation_status AS ENUM ('ready', 'running', 'finished', 'failed');

CREATE TABLE {schema}.tracked_operations (
    target         text        NOT NULL,
    key            text        NOT NULL,
    status         {schema}.operation_status NOT NULL,
    fingerprint    bytea       NOT NULL CHECK (octet_length(fingerprint) = 16),
    reference_time timestamptz NOT NULL,
    started_at     timestamptz,
    timeout        timestamptz,
    expiration     timestamptz,
    result         bytea,
    error          text,
    finished_at    timestamptz,
    error_count    integer     NOT NULL DEFAULT 0 CHECK (error_count >= 0),
    attempt        bigint      NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    PRIMARY KEY (target, key)
);

-- fail_timed_out: Running rows past their timeout.
CREATE INDEX tracked_operations_running_timeout_idx
    ON {schema}.tracked_operations (timeout)
    WHERE status = 'running' AND timeout IS NOT NULL;

-- delete_expired: rows past their expiration.
CREATE INDEX tracked_operations_expiration_idx
    ON {schema}.tracked_operations (expiration)
    WHERE expiration IS NOT NULL;
