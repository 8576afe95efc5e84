-- ana-pg migration 4: the transactional outbox.
-- An operation appends the messages it sends in its own transaction, so they commit with its
-- record or not at all; a relay publishes them afterwards and marks them sent.
-- `position` orders the messages; `id` (random) is the message's identity downstream (the
-- relay's `Nats-Msg-Id`), unique across databases and schemas.
-- `{schema}` is replaced by the repository's (validated, quoted) schema name.

CREATE TABLE IF NOT EXISTS {schema}.outbox (
    position   bigserial   PRIMARY KEY,
    id         uuid        NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    subject    text        NOT NULL CHECK (subject <> ''),
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at    timestamptz
);

-- The relay: pending messages by subject, in order.
CREATE INDEX IF NOT EXISTS outbox_pending_idx
    ON {schema}.outbox (subject, position)
    WHERE sent_at IS NULL;

-- delete_sent: sent messages by age.
CREATE INDEX IF NOT EXISTS outbox_sent_idx
    ON {schema}.outbox (sent_at)
    WHERE sent_at IS NOT NULL;
