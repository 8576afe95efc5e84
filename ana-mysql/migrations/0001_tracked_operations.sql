-- ana-mysql migration 1: the tracked operations table. Times are UTC, to the microsecond.
-- Keys compare byte for byte (utf8mb4_bin): `abc` and `ABC` are two keys.
-- Indexes are declared inline: MySQL 8 has no CREATE INDEX IF NOT EXISTS.

CREATE TABLE IF NOT EXISTS ana_tracked_operations (
    target         VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    `key`          VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    status         VARCHAR(16)  NOT NULL
        CHECK (status IN ('ready', 'running', 'finished', 'failed')),
    fingerprint    BINARY(16)   NOT NULL,
    reference_time DATETIME(6)  NOT NULL,
    started_at     DATETIME(6)  NULL,
    timeout        DATETIME(6)  NULL,
    expiration     DATETIME(6)  NULL,
    result         LONGBLOB     NULL,
    error          TEXT CHARACTER SET utf8mb4 NULL,
    failure        VARCHAR(32)  NULL CHECK (failure IN
        ('error', 'panic', 'cancelled', 'timed_out', 'expired', 'begin_failed', 'commit_failed')),
    finished_at    DATETIME(6)  NULL,
    error_count    INT UNSIGNED NOT NULL DEFAULT 0,
    attempt        BIGINT UNSIGNED NOT NULL DEFAULT 0,
    claim          BIGINT UNSIGNED NULL,
    PRIMARY KEY (target, `key`),
    -- fail_timed_out: Running rows past their timeout.
    KEY ana_tracked_operations_running_timeout_idx (status, timeout),
    -- delete_expired: rows past their expiration.
    KEY ana_tracked_operations_expiration_idx (expiration)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
