-- ana-sqlite migration 1: the tracked operations table and the claim counter.
-- Times are whole microseconds since the Unix epoch (UTC), read from SQLite's own clock.

CREATE TABLE ana_tracked_operations (
    target         TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    status         TEXT    NOT NULL
        CHECK (status IN ('ready', 'running', 'finished', 'failed')),
    fingerprint    BLOB    NOT NULL CHECK (length(fingerprint) = 16),
    reference_time INTEGER NOT NULL,
    started_at     INTEGER,
    timeout        INTEGER,
    expiration     INTEGER,
    result         BLOB,
    error          TEXT,
    failure        TEXT CHECK (failure IN
        ('error', 'panic', 'cancelled', 'timed_out', 'expired', 'begin_failed', 'commit_failed')),
    finished_at    INTEGER,
    error_count    INTEGER NOT NULL DEFAULT 0 CHECK (error_count >= 0),
    attempt        INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    claim          INTEGER,
    PRIMARY KEY (target, key)
);

-- fail_timed_out: Running rows past their timeout.
CREATE INDEX ana_tracked_operations_running_timeout_idx
    ON ana_tracked_operations (timeout)
    WHERE status = 'running' AND timeout IS NOT NULL;

-- delete_expired: rows past their expiration.
CREATE INDEX ana_tracked_operations_expiration_idx
    ON ana_tracked_operations (expiration)
    WHERE expiration IS NOT NULL;

-- The last claim number given. A claim takes `last + 1`; the triggers move `last` forward, so
-- a record deleted and created again never gets a number an earlier holder has.
CREATE TABLE ana_claims (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT INTO ana_claims (id, last) VALUES (1, 0);

CREATE TRIGGER ana_claims_on_insert AFTER INSERT ON ana_tracked_operations
WHEN new.claim IS NOT NULL
BEGIN
    UPDATE ana_claims SET last = max(last, new.claim) WHERE id = 1;
END;

CREATE TRIGGER ana_claims_on_update AFTER UPDATE OF claim ON ana_tracked_operations
WHEN new.claim IS NOT NULL
BEGIN
    UPDATE ana_claims SET last = max(last, new.claim) WHERE id = 1;
END;
