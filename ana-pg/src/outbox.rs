//! [`Outbox`]: messages an operation sends, committed with its record (the transactional
//! outbox).
//!
//! An operation appends its outgoing messages through its [`PgSession`], in the transaction
//! that records it Finished: the messages exist exactly when the operation's work committed.
//! A relay (`ana_nats::OutboxRelay` publishes to NATS JetStream) takes pending messages in
//! batches with [`Outbox::next_batch`], publishes them, and marks them sent with
//! [`OutboxBatch::mark_sent`]. A relay that crashes between the two publishes the batch again:
//! each message carries its [`id`](OutboxMessage::id), which the broker (JetStream's
//! duplicate window, through `Nats-Msg-Id`) or an idempotent consumer uses to drop the copy.
//!
//! ## Order
//!
//! A batch holds, for each subject it takes, a transaction-scoped advisory lock on that
//! subject, and its rows `FOR UPDATE SKIP LOCKED`: any number of relays may run, a subject is
//! relayed by one of them at a time, and its messages are handed over in `position` order.
//! So messages of one subject are published in the order their transactions committed,
//! for transactions that did not overlap (one committed before the other appended). Two
//! transactions that were open at the same time have no order between them: each message
//! goes out once its own transaction committed. Messages of different subjects have no order
//! between them.
//!
//! ```no_run
//! use ana_core::{operation, BoxError, Manager};
//! use ana_pg::outbox::Outbox;
//! use ana_pg::{PgRepository, PgSession, sqlx};
//!
//! # async fn f(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let repository = PgRepository::new(pool);
//! repository.migrate().await?; // creates <schema>.outbox too
//! let outbox = Outbox::new(&repository);
//! let manager: Manager<String, i64, PgSession> = Manager::new(repository);
//!
//! let op = operation("create-order", "order-42", "book".to_owned(), {
//!     let outbox = outbox.clone();
//!     move |session: PgSession| async move {
//!         let id: i64 = {
//!             let mut tx = session.transaction().await?;
//!             sqlx::query_scalar("INSERT INTO orders (item) VALUES ('book') RETURNING id")
//!                 .fetch_one(&mut *tx)
//!                 .await?
//!         };
//!         // Sent only if the order and its record commit.
//!         outbox.append(&session, "orders.created", id.to_string().as_bytes()).await?;
//!         Ok::<_, BoxError>(id)
//!     }
//! });
//! manager.call(op).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ana_core::RepositoryError;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use crate::error::map_sqlx;
use crate::repository::PgRepository;
use crate::schema::{SchemaName, Sql};
use crate::session::{self, PgSession};

/// The outbox of a [`PgRepository`]'s schema: `<schema>.outbox`, created by
/// [`PgRepository::migrate`] (migration 4). Clones share the pool and the SQL.
#[derive(Clone)]
pub struct Outbox {
    pool: PgPool,
    shared: Arc<Statements>,
}

struct Statements {
    schema: SchemaName,
    append: Sql,
    next_batch: Sql,
    mark_sent: Sql,
    delete_sent: Sql,
    pending: Sql,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("schema", &self.shared.schema)
            .finish_non_exhaustive()
    }
}

/// Why a message could not be appended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// Not a subject a message can be published to: empty, or holding whitespace, or an
    /// empty token (`a..b`), or a wildcard (`*`, `>`).
    #[error("invalid subject {0:?}: expected dot-separated tokens without whitespace or wildcards")]
    InvalidSubject(String),
    /// The store failed, or the session was closed.
    #[error(transparent)]
    Store(#[from] RepositoryError),
}

/// One message taken by a relay.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxMessage {
    /// The message's identity: a random UUID, given at append time. The relay sends it as the
    /// message id (`Nats-Msg-Id`), so a copy sent again after a crash is recognised.
    pub id: String,
    /// Its place in the outbox: increasing with every append.
    pub position: i64,
    /// Where it goes.
    pub subject: String,
    /// Its body.
    pub payload: Vec<u8>,
}

/// Pending messages a relay holds (their subjects locked, their rows locked) until it marks
/// them sent or drops the batch. Dropped unmarked, the batch rolls back and its messages are
/// taken again by the next batch.
pub struct OutboxBatch {
    tx: Transaction<'static, Postgres>,
    messages: Vec<OutboxMessage>,
    mark_sent: Sql,
}

impl fmt::Debug for OutboxBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxBatch")
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// The outbox in `repository`'s schema, on its pool.
    pub fn new(repository: &PgRepository) -> Self {
        let schema = repository.schema_name().clone();
        let table = format!("{}.outbox", schema.quoted());
        let append = format!(
            "INSERT INTO {table} (subject, payload) VALUES ($1, $2) RETURNING id::text AS id"
        );
        // The subjects are locked first (one relay per subject at a time), at most $2 of them,
        // then their oldest rows are taken. A stale snapshot of a row another relay marked
        // meanwhile is filtered out again by `FOR UPDATE` on the row's latest version.
        let next_batch = format!(
            "WITH locked AS MATERIALIZED (
                SELECT s.subject
                FROM (SELECT DISTINCT subject FROM {table} WHERE sent_at IS NULL) s
                WHERE pg_try_advisory_xact_lock(hashtextextended($3 || s.subject, 0))
                LIMIT $2
            )
            SELECT o.position, o.id::text AS id, o.subject, o.payload
            FROM {table} o
            JOIN locked l ON l.subject = o.subject
            WHERE o.sent_at IS NULL
            ORDER BY o.position
            LIMIT $1
            FOR UPDATE OF o SKIP LOCKED"
        );
        let mark_sent = format!(
            "UPDATE {table} SET sent_at = clock_timestamp()
             WHERE position = ANY($1) AND sent_at IS NULL"
        );
        let delete_sent = format!(
            "WITH picked AS MATERIALIZED (
                SELECT position FROM {table}
                WHERE sent_at IS NOT NULL
                  AND sent_at < clock_timestamp() - $2::bigint * interval '1 microsecond'
                ORDER BY sent_at
                LIMIT $1
                FOR UPDATE SKIP LOCKED)
             DELETE FROM {table} t USING picked WHERE t.position = picked.position"
        );
        let pending = format!("SELECT count(*) FROM {table} WHERE sent_at IS NULL");
        Self {
            pool: repository.pool().clone(),
            shared: Arc::new(Statements {
                schema,
                append: Sql::new(append),
                next_batch: Sql::new(next_batch),
                mark_sent: Sql::new(mark_sent),
                delete_sent: Sql::new(delete_sent),
                pending: Sql::new(pending),
            }),
        }
    }

    /// The schema holding the outbox.
    pub fn schema(&self) -> &str {
        self.shared.schema.as_str()
    }

    /// Appends a message to `subject` in the session's transaction (opening it if the
    /// operation has not yet): it is relayed only if the operation's record turns Finished.
    /// Returns the message's id.
    ///
    /// # Errors
    ///
    /// [`OutboxError::InvalidSubject`]; [`OutboxError::Store`] when the session is closed or
    /// the insert fails.
    pub async fn append(
        &self,
        session: &PgSession,
        subject: &str,
        payload: &[u8],
    ) -> Result<String, OutboxError> {
        let mut tx = session.transaction().await?;
        self.append_on(&mut tx, subject, payload).await
    }

    /// Appends a message on `connection`, for a transaction of your own (outside a
    /// [`Manager`](ana_core::Manager) call): it is relayed once that transaction commits.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append).
    pub async fn append_on(
        &self,
        connection: &mut PgConnection,
        subject: &str,
        payload: &[u8],
    ) -> Result<String, OutboxError> {
        check_subject(subject)?;
        let id = sqlx::query_scalar(self.shared.append.get())
            .bind(subject)
            .bind(payload)
            .fetch_one(connection)
            .await
            .map_err(map_sqlx)?;
        Ok(id)
    }

    /// Takes up to `limit` pending messages, oldest first, of subjects no other batch holds,
    /// in a transaction that holds them until [`OutboxBatch::mark_sent`] or the batch is
    /// dropped. `None` when nothing is pending (or every pending subject is held).
    ///
    /// # Errors
    ///
    /// The database's refusal or unavailability.
    pub async fn next_batch(&self, limit: u32) -> Result<Option<OutboxBatch>, RepositoryError> {
        // Each step of the batch's transaction runs to its end even if this call or the
        // batch's `mark_sent` is cancelled (see `session::begin`).
        let connection = self.pool.acquire().await.map_err(map_sqlx)?;
        let mut tx = session::begin(connection).await?;
        let rows = sqlx::query(self.shared.next_batch.get())
            .bind(i64::from(limit))
            .bind(i64::from(limit))
            .bind(format!("ana outbox {} ", self.shared.schema.as_str()))
            .fetch_all(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        if rows.is_empty() {
            // Nothing held: the (empty) transaction ends here.
            session::rollback(tx).await;
            return Ok(None);
        }
        let messages = rows
            .iter()
            .map(|row| {
                Ok(OutboxMessage {
                    position: row.try_get("position")?,
                    id: row.try_get("id")?,
                    subject: row.try_get("subject")?,
                    payload: row.try_get("payload")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(map_sqlx)?;
        Ok(Some(OutboxBatch {
            tx,
            messages,
            mark_sent: self.shared.mark_sent.clone(),
        }))
    }

    /// Deletes up to `limit` messages sent more than `older_than` ago. Returns how many went.
    ///
    /// # Errors
    ///
    /// The database's refusal or unavailability.
    pub async fn delete_sent(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<u64, RepositoryError> {
        let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
        sqlx::query(self.shared.delete_sent.get())
            .bind(i64::from(limit))
            .bind(micros)
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(map_sqlx)
    }

    /// How many messages are waiting to be relayed.
    ///
    /// # Errors
    ///
    /// The database's refusal or unavailability.
    pub async fn pending(&self) -> Result<u64, RepositoryError> {
        let count: i64 = sqlx::query_scalar(self.shared.pending.get())
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

impl OutboxBatch {
    /// The messages, in `position` order.
    pub fn messages(&self) -> &[OutboxMessage] {
        &self.messages
    }

    /// Marks every message of the batch sent and commits, releasing its subjects.
    ///
    /// # Errors
    ///
    /// The database's refusal or unavailability: the messages stay pending and are relayed
    /// again (their ids let the receiver drop the copies).
    pub async fn mark_sent(mut self) -> Result<(), RepositoryError> {
        let positions: Vec<i64> = self.messages.iter().map(|m| m.position).collect();
        sqlx::query(self.mark_sent.get())
            .bind(positions)
            .execute(&mut *self.tx)
            .await
            .map_err(map_sqlx)?;
        session::commit(self.tx).await
    }
}

/// A NATS subject a message can be published to: non-empty dot-separated tokens, no
/// whitespace, no wildcard token.
fn check_subject(subject: &str) -> Result<(), OutboxError> {
    let valid = !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && !token.chars().any(|c| c.is_whitespace() || c.is_control())
        });
    if valid {
        Ok(())
    } else {
        Err(OutboxError::InvalidSubject(subject.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked() {
        for good in ["orders.created", "a", "credit.reserved.v1", "x-y_z.1"] {
            assert!(check_subject(good).is_ok(), "{good}");
        }
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a\tb", "a\nb"] {
            assert!(
                matches!(check_subject(bad), Err(OutboxError::InvalidSubject(s)) if s == bad),
                "{bad:?}"
            );
        }
    }
}
