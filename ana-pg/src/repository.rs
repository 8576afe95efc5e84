//! [`PgRepository`]: the Postgres [`IdempotencyRepository`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ana_core::chrono::{DateTime, Utc};
use ana_core::{
    Claim, ClaimRequest, Cleaned, Completion, Failure, FailureKind, Fingerprint, Forgotten,
    IdempotencyRepository, Lease, Maintenance, RecordId, Renewal, RepositoryError, Stats, Status,
    TrackedOperation, Watch,
};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, Row};

use crate::error::{ClaimRace, ForgetRace, map_sqlx};
use crate::handoff::Handoff;
use crate::notify::Notifications;
use crate::schema::{self, InvalidSchemaName, SchemaName, Statements};
use crate::session::{self, PgSession, State};

/// How many times a claim statement is run when a concurrent claim makes its answer useless
/// (no row, or a stale read of a record it could have taken; see [`PgRepository`]).
const CLAIM_TRIES: u32 = 3;

/// A timeout is capped at 100 years, well inside Postgres' interval and timestamp range.
const MAX_TIMEOUT_MICROS: i64 = 100 * 366 * 24 * 3600 * 1_000_000;

/// Stored error messages are cut to this many bytes.
const MAX_ERROR_LEN: usize = 8 * 1024;

/// A Postgres [`IdempotencyRepository`] on a sqlx [`PgPool`], whose sessions are open
/// transactions ([`PgSession`]).
///
/// - Records live in `<schema>.tracked_operations` (schema `ana` unless
///   [`with_schema`](Self::with_schema) says otherwise); create it with
///   [`migrate`](Self::migrate).
/// - [`claim`](IdempotencyRepository::claim) is one autocommitted
///   statement on the database clock: a read of the record, and only when it may run again
///   an `INSERT … ON CONFLICT … DO UPDATE … WHERE <may run again> … RETURNING`; a held or
///   finished record is answered at once from the read, never waited for, never written.
///   The session keeps the claim's connection; the operation's transaction opens (`BEGIN`)
///   on it at its first [`PgSession::transaction`].
/// - [`complete`](IdempotencyRepository::complete) marks the record Finished inside the
///   session's transaction and commits: the operation's writes and the record commit
///   together. An operation that opened no transaction has its record finished by that one
///   statement, autocommitted. [`fail`](IdempotencyRepository::fail) rolls the transaction back
///   and records the failure (its kind in `failure`, its message in `error`). Both are
///   compare-and-set on the [`Lease`]: the attempt and the claim number.
/// - [`fail_timed_out`](Self::fail_timed_out), [`delete_expired`](Self::delete_expired) and
///   [`spawn_cleanup`](Self::spawn_cleanup) keep the table small.
///
/// Clones share the pool and the prepared SQL.
#[derive(Clone)]
pub struct PgRepository {
    pool: PgPool,
    shared: Arc<Shared>,
    retention: Duration,
}

struct Shared {
    schema: SchemaName,
    sql: Statements,
    notifications: Notifications,
    handoff: Arc<Handoff>,
}

impl fmt::Debug for PgRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgRepository")
            .field("schema", &self.shared.schema)
            .field("retention", &self.retention)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl PgRepository {
    /// A repository on `pool`, in schema `ana`.
    pub fn new(pool: PgPool) -> Self {
        Self::build(pool, SchemaName::default_name())
    }

    /// A repository on `pool`, in schema `schema`, so several applications (or parallel
    /// tests) can share one database.
    ///
    /// # Errors
    ///
    /// [`InvalidSchemaName`] unless the name matches `[a-z_][a-z0-9_]{0,62}`.
    pub fn with_schema(pool: PgPool, schema: &str) -> Result<Self, InvalidSchemaName> {
        Ok(Self::build(pool, SchemaName::parse(schema)?))
    }

    fn build(pool: PgPool, schema: SchemaName) -> Self {
        let sql = Statements::new(&schema);
        let notifications = Notifications::new(&schema);
        Self {
            pool,
            shared: Arc::new(Shared {
                schema,
                sql,
                notifications,
                handoff: Arc::default(),
            }),
            retention: Duration::ZERO,
        }
    }

    /// Keeps expired records `retention` longer before [`delete_expired`](Self::delete_expired)
    /// removes them (default: none). A Finished record replays until it is deleted.
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema holding the records.
    pub fn schema(&self) -> &str {
        self.shared.schema.as_str()
    }

    pub(crate) fn schema_name(&self) -> &SchemaName {
        &self.shared.schema
    }

    /// Creates the schema, its `tracked_operations` table, status type and indexes, applying
    /// the embedded migrations the schema lacks.
    ///
    /// Safe to run at every start, from several processes at once: the migrations run in one
    /// transaction under an advisory lock of the schema, and applied versions are recorded in
    /// `<schema>.schema_migrations`. The schema itself is created only when missing, so a role
    /// without `CREATE` on the database can migrate a schema made for it.
    ///
    /// # Errors
    ///
    /// The database's refusal or unavailability.
    pub async fn migrate(&self) -> Result<(), RepositoryError> {
        let conn = self.pool.acquire().await.map_err(map_sqlx)?;
        schema::migrate(conn, &self.shared.schema).await
    }

    /// Marks Failed ([`FailureKind::TimedOut`] with its message, error count + 1) up to `limit`
    /// Running records whose timeout has passed, skipping rows other transactions hold.
    /// Returns how many changed.
    ///
    /// Not needed for correctness (a claim takes over such a record by itself); it keeps the
    /// table honest for monitoring. A holder still running after its timeout then finishes
    /// with [`Completion::Superseded`] and rolls back.
    ///
    /// # Errors
    ///
    /// The database's refusal or unavailability.
    pub async fn fail_timed_out(&self, limit: u32) -> Result<u64, RepositoryError> {
        sqlx::query(self.shared.sql.fail_timed_out.get())
            .bind(i64::from(limit))
            .bind(FailureKind::TimedOut.message())
            .bind(FailureKind::TimedOut.as_str())
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(map_sqlx)
    }

    /// Deletes up to `limit` records whose expiration passed more than the retention ago,
    /// skipping rows other transactions hold. Returns how many went.
    ///
    /// A deleted key is forgotten: a later call with a fresh reference time runs again. So a
    /// Running record whose holder may still be at work (no timeout, or its timeout ahead)
    /// stays: deleted, it would let a new call run beside the holder. It goes once finished or
    /// failed, or once its timeout has passed; a holder whose record was deleted then finishes
    /// with [`Completion::Expired`] and rolls back.
    ///
    /// # Errors
    ///
    /// The database's refusal or unavailability.
    pub async fn delete_expired(&self, limit: u32) -> Result<u64, RepositoryError> {
        sqlx::query(self.shared.sql.delete_expired.get())
            .bind(i64::from(limit))
            .bind(micros(self.retention))
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(map_sqlx)
    }

    /// Marks the attempt Failed with `kind`, ignoring a failure to do so: the record's timeout
    /// frees it then.
    async fn fail_quietly(&self, id: RecordId<'_>, lease: Lease, kind: FailureKind) {
        let _ = self.fail_attempt(id, lease, kind.into()).await;
    }

    async fn fail_attempt(
        &self,
        id: RecordId<'_>,
        lease: Lease,
        failure: Failure<'_>,
    ) -> Result<Completion, RepositoryError> {
        let done = sqlx::query(self.shared.sql.fail.get())
            .bind(id.target)
            .bind(id.key)
            .bind(token(lease.attempt))
            .bind(storable(failure.message))
            .bind(claim_number(lease.claim))
            .bind(failure.kind.as_str())
            .execute(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(if done.rows_affected() == 1 {
            Completion::Done
        } else {
            Completion::Superseded
        })
    }

    /// The complete statement on `executor`: how many rows it changed (1 or 0).
    async fn complete_on(
        &self,
        executor: impl PgExecutor<'_>,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(self.shared.sql.complete.get())
            .bind(id.target)
            .bind(id.key)
            .bind(token(lease.attempt))
            .bind(result)
            .bind(claim_number(lease.claim))
            .execute(executor)
            .await
            .map(|done| done.rows_affected())
    }

    /// The complete statement on a pooled connection, for an operation that opened no
    /// transaction. On an error the session is left detached, so that a finish tried again
    /// runs the statement again: nothing was in a transaction, the statement is a
    /// compare-and-set, and a record this lease finished already answers Done.
    async fn complete_detached(
        &self,
        session: &PgSession,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<Completion, RepositoryError> {
        match self.complete_on(&self.pool, id, lease, result).await {
            Ok(1) => Ok(Completion::Done),
            Ok(_) => self.classify(id, lease).await,
            Err(error) => {
                session.detach().await;
                Err(map_sqlx(error))
            }
        }
    }

    /// A complete tried again once its transaction ended (a `COMMIT` whose answer was lost):
    /// done when that commit went through, else the transaction's work is gone with it and
    /// the session cannot finish ([`RepositoryError::SessionClosed`]).
    async fn finished_before(
        &self,
        id: RecordId<'_>,
        lease: Lease,
    ) -> Result<Completion, RepositoryError> {
        match self.classify(id, lease).await? {
            Completion::Done => Ok(Completion::Done),
            Completion::Superseded | Completion::Expired => Err(RepositoryError::SessionClosed),
        }
    }

    /// Why a finish changed no row: this claim finished it already (an earlier try whose answer
    /// was lost), the record expired (it is marked Failed now, or was deleted by the clean-up
    /// after its expiration), or another attempt owns it.
    async fn classify(
        &self,
        id: RecordId<'_>,
        lease: Lease,
    ) -> Result<Completion, RepositoryError> {
        let row = sqlx::query(self.shared.sql.expire.get())
            .bind(id.target)
            .bind(id.key)
            .bind(token(lease.attempt))
            .bind(FailureKind::Expired.message())
            .bind(claim_number(lease.claim))
            .bind(FailureKind::Expired.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        let expired: bool = row.try_get("expired").map_err(map_sqlx)?;
        let present: bool = row.try_get("present").map_err(map_sqlx)?;
        let finished: bool = row.try_get("finished").map_err(map_sqlx)?;
        Ok(if finished {
            // This claim's own finish was applied, its answer lost (the statement then ran
            // again and found nothing to change).
            Completion::Done
        } else if expired || !present {
            Completion::Expired
        } else {
            Completion::Superseded
        })
    }
}

impl IdempotencyRepository for PgRepository {
    type Session = PgSession;

    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Claim<PgSession>, RepositoryError> {
        let mut lent = self
            .shared
            .handoff
            .acquire(&self.pool)
            .await
            .map_err(map_sqlx)?;
        let mut tries = 0;
        let (attempt, claim, previous) = loop {
            tries += 1;
            let row = sqlx::query(self.shared.sql.claim.get())
                .bind(request.target)
                .bind(request.key)
                .bind(&request.fingerprint.as_bytes()[..])
                .bind(request.reference_time)
                .bind(request.timeout.map(micros))
                .bind(request.expiration)
                .fetch_optional(&mut *lent.connection)
                .await
                .map_err(map_sqlx)?;
            // No row: the record was committed by a concurrent claim after this statement's
            // snapshot (the upsert saw it, the SELECT of the same statement did not). Again.
            if let Some(row) = row {
                let acquired: bool = row.try_get("acquired").map_err(map_sqlx)?;
                let now: DateTime<Utc> = row.try_get("now").map_err(map_sqlx)?;
                let record = decode(&row)?;
                if acquired {
                    let claim: i64 = row.try_get("claim").map_err(map_sqlx)?;
                    // A transaction id, always positive.
                    let claim = u64::try_from(claim).map_err(|_| RepositoryError::Corrupt {
                        detail: format!(
                            "record {}/{}: claim number {claim}",
                            request.target, request.key
                        ),
                    })?;
                    // The status the statement read before taking the record over (a
                    // concurrent change in between is as good as not seen): for reports.
                    let previous: Option<String> = row.try_get("previous").map_err(map_sqlx)?;
                    let previous = previous.and_then(|status| status.parse().ok());
                    break (record.attempt, claim, previous);
                }
                // Not taken, though the record read was one to take: a concurrent claim took
                // it over after this statement's snapshot (the conflict arm re-checked the
                // latest version and left it). The read is stale: again, to answer the record
                // as it stands now.
                if !record.is_claimable_at(request.fingerprint, now) {
                    lent.release(&self.pool);
                    return Ok(Claim::Existing { record, now });
                }
            }
            if tries >= CLAIM_TRIES {
                return Err(RepositoryError::Backend(Box::new(ClaimRace {
                    target: request.target.to_owned(),
                    key: request.key.to_owned(),
                    tries,
                })));
            }
        };
        // The claim is committed. The session keeps this connection: the operation's
        // transaction opens on it when first asked for, so a call holds one connection at a
        // time and goes through the pool once.
        Ok(Claim::Acquired {
            lease: Lease { attempt, claim },
            session: PgSession::new(lent, attempt),
            previous,
        })
    }

    async fn complete(
        &self,
        session: PgSession,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<Completion, RepositoryError> {
        // `_held` counts the connection as the repository's until the transaction is done.
        let (mut tx, _held) = match session.take().await {
            Some(State::Open(tx, held)) => (tx, held),
            // The operation never opened its transaction: one autocommitted statement.
            Some(State::Idle(mut lent)) => {
                let updated = self
                    .complete_on(&mut *lent.connection, id, lease, result)
                    .await;
                return match updated {
                    Ok(changed) => {
                        // Answered, and no transaction open: ready for the next claim.
                        lent.release(&self.pool);
                        if changed == 1 {
                            Ok(Completion::Done)
                        } else {
                            self.classify(id, lease).await
                        }
                    }
                    // The claim's connection may have been dropped while the operation ran
                    // (an idle timeout, a proxy). Nothing was in a transaction on it, and the
                    // statement is a compare-and-set: it runs again, on another connection.
                    Err(_) => {
                        drop(lent);
                        self.complete_detached(&session, id, lease, result).await
                    }
                };
            }
            Some(State::Detached) => {
                return self.complete_detached(&session, id, lease, result).await;
            }
            Some(State::BeginFailed) => {
                self.fail_quietly(id, lease, FailureKind::BeginFailed).await;
                return Err(RepositoryError::SessionClosed);
            }
            None => return self.finished_before(id, lease).await,
        };
        match self.complete_on(&mut *tx, id, lease, result).await {
            Ok(1) => match session::commit(tx).await {
                Ok(()) => Ok(Completion::Done),
                Err(error) => {
                    // The server rolled back (or the outcome is unknown, and the
                    // compare-and-set leaves a committed Finished record alone).
                    self.fail_quietly(id, lease, FailureKind::CommitFailed)
                        .await;
                    Err(error)
                }
            },
            Ok(_) => {
                // Rolled back on the server even if this fails (the connection is then
                // closed instead of pooled).
                session::rollback(tx).await;
                self.classify(id, lease).await
            }
            Err(error) => {
                session::rollback(tx).await;
                self.fail_quietly(id, lease, FailureKind::CommitFailed)
                    .await;
                Err(map_sqlx(error))
            }
        }
    }

    async fn fail(
        &self,
        session: PgSession,
        id: RecordId<'_>,
        lease: Lease,
        failure: Failure<'_>,
    ) -> Result<Completion, RepositoryError> {
        if let Some(State::Open(tx, _held)) = session.take().await {
            session::rollback(tx).await;
        }
        self.fail_attempt(id, lease, failure).await
    }

    async fn renew(
        &self,
        id: RecordId<'_>,
        lease: Lease,
        lease_for: Duration,
    ) -> Result<Renewal, RepositoryError> {
        let until: Option<DateTime<Utc>> = sqlx::query_scalar(self.shared.sql.renew.get())
            .bind(id.target)
            .bind(id.key)
            .bind(token(lease.attempt))
            .bind(claim_number(lease.claim))
            .bind(micros(lease_for))
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(until.map_or(Renewal::Lost, |until| Renewal::Renewed { until }))
    }

    /// Woken by the `NOTIFY` of a finish in any process, through the repository's one
    /// listening connection (taken from the pool at the first watch, kept, and opened again
    /// after it was lost).
    fn watch(&self, id: RecordId<'_>) -> Watch {
        self.shared
            .notifications
            .watch(&self.pool, &self.shared.sql.mark_watched, id)
    }

    async fn get(
        &self,
        target: &str,
        key: &str,
    ) -> Result<Option<TrackedOperation>, RepositoryError> {
        let row = sqlx::query(self.shared.sql.get.get())
            .bind(target)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?;
        row.as_ref().map(decode).transpose()
    }
}

/// - `forget` is one statement: a `DELETE` whose condition (forced, or not held) Postgres
///   re-checks on the latest row version, so a record claimed after the statement's snapshot
///   is never deleted unforced. When the record changed under it, it runs again (three times
///   at most). A deleted record a call waits on is notified, as a finish is.
/// - `stats` is one `count(*) … GROUP BY status`: a scan of the table.
/// - `cleanup` is [`fail_timed_out`](PgRepository::fail_timed_out) then
///   [`delete_expired`](PgRepository::delete_expired), each of at most `limit` rows (expired
///   records are deleted after the [retention](PgRepository::with_retention)).
impl Maintenance for PgRepository {
    async fn forget(&self, id: RecordId<'_>, force: bool) -> Result<Forgotten, RepositoryError> {
        for _ in 0..CLAIM_TRIES {
            let row = sqlx::query(self.shared.sql.forget.get())
                .bind(id.target)
                .bind(id.key)
                .bind(force)
                .fetch_one(&self.pool)
                .await
                .map_err(map_sqlx)?;
            let deleted: bool = row.try_get("deleted").map_err(map_sqlx)?;
            let status: Option<String> = row.try_get("status").map_err(map_sqlx)?;
            let timeout: Option<DateTime<Utc>> = row.try_get("timeout").map_err(map_sqlx)?;
            let now: DateTime<Utc> = row.try_get("now").map_err(map_sqlx)?;
            if deleted {
                return Ok(Forgotten::Deleted);
            }
            let Some(status) = status else {
                return Ok(Forgotten::NotFound);
            };
            let held = status == Status::Running.as_str() && timeout.is_none_or(|at| at > now);
            if held && !force {
                return Ok(Forgotten::Held { timeout });
            }
            // The record the snapshot shows was one to delete, yet the delete found it
            // changed (claimed, or deleted, after the snapshot): again, on the record as it
            // stands now.
        }
        Err(RepositoryError::Backend(Box::new(ForgetRace {
            target: id.target.to_owned(),
            key: id.key.to_owned(),
            tries: CLAIM_TRIES,
        })))
    }

    async fn stats(&self) -> Result<Stats, RepositoryError> {
        let rows = sqlx::query(self.shared.sql.stats.get())
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        let mut stats = Stats::default();
        for row in rows {
            let status: String = row.try_get("status").map_err(map_sqlx)?;
            let status: Status = status.parse().map_err(|error| RepositoryError::Corrupt {
                detail: format!("{error}"),
            })?;
            let count = |column: &str| -> Result<u64, RepositoryError> {
                let n: i64 = row.try_get(column).map_err(map_sqlx)?;
                Ok(u64::try_from(n).unwrap_or(0))
            };
            stats.count(status, count("records")?);
            stats.timed_out += count("timed_out")?;
            stats.expired += count("expired")?;
        }
        Ok(stats)
    }

    async fn cleanup(&self, limit: u32) -> Result<Cleaned, RepositoryError> {
        let mut cleaned = Cleaned::default();
        cleaned.failed = self.fail_timed_out(limit).await?;
        cleaned.deleted = self.delete_expired(limit).await?;
        Ok(cleaned)
    }
}

/// Reads a record from the columns the statements select.
fn decode(row: &PgRow) -> Result<TrackedOperation, RepositoryError> {
    let target: String = row.try_get("target").map_err(map_sqlx)?;
    let key: String = row.try_get("key").map_err(map_sqlx)?;
    let corrupt = |what: String| RepositoryError::Corrupt {
        detail: format!("record {target}/{key}: {what}"),
    };
    let status: String = row.try_get("status").map_err(map_sqlx)?;
    let status: Status = status.parse().map_err(|e| corrupt(format!("{e}")))?;
    let fingerprint: Vec<u8> = row.try_get("fingerprint").map_err(map_sqlx)?;
    let fingerprint = Fingerprint::from_slice(&fingerprint)
        .ok_or_else(|| corrupt(format!("fingerprint of {} bytes", fingerprint.len())))?;
    let error_count: i32 = row.try_get("error_count").map_err(map_sqlx)?;
    let error_count =
        u32::try_from(error_count).map_err(|_| corrupt(format!("error count {error_count}")))?;
    let attempt: i64 = row.try_get("attempt").map_err(map_sqlx)?;
    let attempt = u64::try_from(attempt).map_err(|_| corrupt(format!("attempt {attempt}")))?;
    let failure: Option<String> = row.try_get("failure").map_err(map_sqlx)?;
    let failure = failure
        .map(|name| name.parse::<FailureKind>())
        .transpose()
        .map_err(|e| corrupt(format!("{e}")))?;
    Ok(TrackedOperation {
        status,
        fingerprint,
        reference_time: row.try_get("reference_time").map_err(map_sqlx)?,
        started_at: row.try_get("started_at").map_err(map_sqlx)?,
        timeout: row.try_get("timeout").map_err(map_sqlx)?,
        expiration: row.try_get("expiration").map_err(map_sqlx)?,
        result: row.try_get("result").map_err(map_sqlx)?,
        error: row.try_get("error").map_err(map_sqlx)?,
        failure,
        finished_at: row.try_get("finished_at").map_err(map_sqlx)?,
        error_count,
        attempt,
        target,
        key,
    })
}

/// A duration in whole microseconds (rounded up, so a non-zero timeout is never zero), capped
/// at 100 years.
fn micros(duration: Duration) -> i64 {
    let rounded = duration.as_micros() + u128::from(!duration.subsec_nanos().is_multiple_of(1_000));
    i64::try_from(rounded).map_or(MAX_TIMEOUT_MICROS, |micros| micros.min(MAX_TIMEOUT_MICROS))
}

/// The attempt number as stored; a number beyond the column's range matches no record (the
/// column holds no negative number).
fn token(attempt: u64) -> i64 {
    i64::try_from(attempt).unwrap_or(-1)
}

/// The claim number as stored (a transaction id, positive); a number beyond the column's range
/// is NULL, which matches no record.
fn claim_number(claim: u64) -> Option<i64> {
    i64::try_from(claim).ok()
}

/// An error message Postgres `text` accepts: no NUL bytes, at most [`MAX_ERROR_LEN`] bytes.
fn storable(message: &str) -> String {
    let mut end = message.len().min(MAX_ERROR_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].replace('\0', "\u{fffd}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_up_and_cap() {
        assert_eq!(micros(Duration::from_nanos(1)), 1);
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(micros(Duration::MAX), MAX_TIMEOUT_MICROS);
    }

    #[test]
    fn claim_numbers_never_wrap() {
        assert_eq!(claim_number(42), Some(42));
        assert_eq!(claim_number((1 << 63) - 1), Some(i64::MAX));
        assert_eq!(claim_number(u64::MAX), None);
        assert_eq!(claim_number(1 << 63), None);
    }

    #[test]
    fn stored_errors_have_no_nul_and_are_bounded() {
        assert_eq!(storable("a\0b"), "a\u{fffd}b");
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = storable(&long);
        assert!(cut.len() <= MAX_ERROR_LEN && cut.chars().all(|c| c == 'é'));
    }

    #[tokio::test]
    async fn schema_names_are_checked() {
        // A lazy pool needs no server.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://localhost/none")
            .unwrap();
        assert!(PgRepository::with_schema(pool.clone(), "Bad-Name").is_err());
        let repository = PgRepository::with_schema(pool, "tenant_1").unwrap();
        assert_eq!(repository.schema(), "tenant_1");
    }
}
