//! [`MySqlRepository`]: the MySQL / MariaDB [`IdempotencyRepository`].

use std::fmt;
use std::time::Duration;

use ana_core::chrono::{DateTime, Utc};
use ana_core::{
    Claim, ClaimRequest, Cleaned, Completion, Failure, FailureKind, Fingerprint, Forgotten,
    IdempotencyRepository, Lease, Maintenance, RecordId, Renewal, RepositoryError, Stats, Status,
    TrackedOperation,
};
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlExecutor, MySqlPool, Row};

use crate::error::{ClaimRace, TooLong, is_deadlock, map_sqlx};
use crate::schema::{self, SQL};
use crate::session::{self, MySqlSession, State};

/// How many times a claim reads and writes again when a concurrent claim changed the record
/// between its read and its write, or InnoDB rolled its write back as a deadlock victim.
const CLAIM_TRIES: u32 = 5;

/// A timeout is capped at 100 years, well inside `DATETIME`'s range.
const MAX_TIMEOUT_MICROS: i64 = 100 * 366 * 24 * 3600 * 1_000_000;

/// Stored error messages are cut to this many bytes (`TEXT` holds 64 KiB).
const MAX_ERROR_LEN: usize = 8 * 1024;

/// The longest target the table holds, in characters.
pub const MAX_TARGET_LEN: usize = 512;

/// The longest key the table holds, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// A MySQL / MariaDB [`IdempotencyRepository`] on a sqlx [`MySqlPool`], whose sessions are
/// open transactions ([`MySqlSession`]).
///
/// - Records live in `ana_tracked_operations` of the pool's database; create it with
///   [`migrate`](Self::migrate).
/// - [`claim`](IdempotencyRepository::claim) reads the record first (a consistent read: no
///   lock) and answers a record that may not run again from it. Otherwise one statement,
///   `INSERT … ON DUPLICATE KEY UPDATE` with conditional assignments, creates or takes over
///   the record on the server's clock; the session keeps the claim's connection.
/// - [`complete`](IdempotencyRepository::complete) marks the record Finished inside the
///   session's transaction and commits; [`fail`](IdempotencyRepository::fail) rolls back and
///   records the failure. Both are compare-and-set on the [`Lease`].
/// - [`fail_timed_out`](Self::fail_timed_out), [`delete_expired`](Self::delete_expired) and
///   [`spawn_cleanup`](Self::spawn_cleanup) keep the table small.
///
/// Clones share the pool.
#[derive(Clone)]
pub struct MySqlRepository {
    pool: MySqlPool,
    retention: Duration,
}

impl fmt::Debug for MySqlRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlRepository")
            .field("retention", &self.retention)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl MySqlRepository {
    /// A repository on `pool`, in the pool's database.
    pub fn new(pool: MySqlPool) -> Self {
        Self {
            pool,
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
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Creates the `ana_tracked_operations` table and its indexes, applying the embedded
    /// migrations the database lacks.
    ///
    /// Safe to run at every start, from several processes at once: the migrations run under
    /// a named lock (`GET_LOCK`) of the database, and applied versions are recorded in
    /// `ana_schema_migrations`.
    ///
    /// # Errors
    ///
    /// The database's refusal or unavailability.
    pub async fn migrate(&self) -> Result<(), RepositoryError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        schema::migrate(&mut conn).await
    }

    /// Marks Failed ([`FailureKind::TimedOut`] with its message, error count + 1) up to `limit`
    /// Running records whose timeout has passed, oldest first. Returns how many changed.
    ///
    /// Not needed for correctness (a claim takes over such a record by itself); it keeps the
    /// table honest for monitoring. A holder still running after its timeout then finishes
    /// with [`Completion::Superseded`] and rolls back.
    ///
    /// # Errors
    ///
    /// The database's refusal or unavailability.
    pub async fn fail_timed_out(&self, limit: u32) -> Result<u64, RepositoryError> {
        sqlx::query(SQL.fail_timed_out.as_str())
            .bind(FailureKind::TimedOut.message())
            .bind(FailureKind::TimedOut.as_str())
            .bind(limit)
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(map_sqlx)
    }

    /// Deletes up to `limit` records whose expiration passed more than the retention ago,
    /// oldest first. Returns how many went.
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
        sqlx::query(SQL.delete_expired.as_str())
            .bind(micros(self.retention))
            .bind(limit)
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
        let done = sqlx::query(SQL.fail.as_str())
            .bind(storable(failure.message))
            .bind(failure.kind.as_str())
            .bind(id.target)
            .bind(id.key)
            .bind(lease.attempt)
            .bind(lease.claim)
            .execute(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(if done.rows_affected() == 1 {
            Completion::Done
        } else {
            Completion::Superseded
        })
    }

    /// The complete statement on `executor`: how many rows it matched (1 or 0).
    async fn complete_on(
        &self,
        executor: impl MySqlExecutor<'_>,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(SQL.complete.as_str())
            .bind(result)
            .bind(id.target)
            .bind(id.key)
            .bind(lease.attempt)
            .bind(lease.claim)
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
        session: &MySqlSession,
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

    /// Why a finish changed no row: the record expired (marked Failed now, or deleted by the
    /// clean-up after its expiration), this claim finished it already (an earlier try whose
    /// answer was lost), or another attempt owns it.
    async fn classify(
        &self,
        id: RecordId<'_>,
        lease: Lease,
    ) -> Result<Completion, RepositoryError> {
        let expired = sqlx::query(SQL.expire.as_str())
            .bind(FailureKind::Expired.message())
            .bind(FailureKind::Expired.as_str())
            .bind(id.target)
            .bind(id.key)
            .bind(lease.attempt)
            .bind(lease.claim)
            .execute(&self.pool)
            .await
            .map_err(map_sqlx)?
            .rows_affected()
            == 1;
        if expired {
            return Ok(Completion::Expired);
        }
        let row = sqlx::query(SQL.classify.as_str())
            .bind(id.target)
            .bind(id.key)
            .bind(id.target)
            .bind(id.key)
            .bind(lease.claim)
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        let present: i64 = row.try_get("present").map_err(map_sqlx)?;
        let finished: i64 = row.try_get("finished").map_err(map_sqlx)?;
        Ok(if finished == 1 {
            Completion::Done
        } else if present == 0 {
            Completion::Expired
        } else {
            Completion::Superseded
        })
    }
}

/// What the claim's read found.
enum Read {
    /// The record may not run again: the claim's answer.
    Existing(TrackedOperation, DateTime<Utc>),
    /// Missing or claimable: write, with this fresh claim number; the status read, for the
    /// claim's report of what it took over.
    Write(u64, Option<Status>),
}

async fn read(
    conn: &mut sqlx::MySqlConnection,
    request: &ClaimRequest<'_>,
) -> Result<Read, RepositoryError> {
    let row = sqlx::query(SQL.read.as_str())
        .bind(&request.fingerprint.as_bytes()[..])
        .bind(request.target)
        .bind(request.key)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let present: Option<String> = row.try_get("target").map_err(map_sqlx)?;
    let claimable: Option<i64> = row.try_get("claimable").map_err(map_sqlx)?;
    if present.is_some() && claimable != Some(1) {
        let now: DateTime<Utc> = row.try_get("now").map_err(map_sqlx)?;
        return Ok(Read::Existing(decode(&row)?, now));
    }
    let previous = match present {
        Some(_) => Some(decode(&row)?.status),
        None => None,
    };
    Ok(Read::Write(
        row.try_get("next_claim").map_err(map_sqlx)?,
        previous,
    ))
}

/// The claim statement with claim number `claim`: the attempt it started, or `None` when it
/// left the record as it was.
async fn write(
    conn: &mut sqlx::MySqlConnection,
    request: &ClaimRequest<'_>,
    claim: u64,
) -> Result<Option<u64>, sqlx::Error> {
    let timeout = request.timeout.map(micros);
    let fingerprint = &request.fingerprint.as_bytes()[..];
    let done = sqlx::query(SQL.claim.as_str())
        .bind(request.target)
        .bind(request.key)
        .bind(fingerprint)
        .bind(request.reference_time)
        .bind(timeout)
        .bind(request.expiration)
        .bind(claim)
        .bind(fingerprint)
        .bind(claim)
        .bind(claim)
        .bind(claim)
        .bind(claim)
        .bind(claim)
        .bind(timeout)
        .bind(claim)
        .bind(claim)
        .execute(&mut *conn)
        .await?;
    Ok(match done.last_insert_id() {
        0 => None,
        attempt => Some(attempt),
    })
}

fn check_len(what: &'static str, value: &str, max: usize) -> Result<(), RepositoryError> {
    let len = value.chars().count();
    if len > max {
        return Err(RepositoryError::Backend(Box::new(TooLong {
            what,
            len,
            max,
        })));
    }
    Ok(())
}

impl IdempotencyRepository for MySqlRepository {
    type Session = MySqlSession;

    fn name(&self) -> &'static str {
        "mysql"
    }

    async fn claim(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Result<Claim<MySqlSession>, RepositoryError> {
        // Strict mode would refuse them too; checked here so the error says why.
        check_len("a target", request.target, MAX_TARGET_LEN)?;
        check_len("a key", request.key, MAX_KEY_LEN)?;
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        for _ in 0..CLAIM_TRIES {
            let claim = match read(&mut conn, request).await? {
                Read::Existing(record, now) => return Ok(Claim::Existing { record, now }),
                Read::Write(claim, previous) => (claim, previous),
            };
            let (claim, previous) = claim;
            match write(&mut conn, request, claim).await {
                Ok(Some(attempt)) => {
                    // Committed (autocommit). The session keeps this connection: the
                    // operation's transaction opens on it when first asked for.
                    return Ok(Claim::Acquired {
                        lease: Lease { attempt, claim },
                        session: MySqlSession::new(conn, attempt),
                        previous,
                    });
                }
                // Taken by a concurrent claim after the read, or the statement rolled back
                // as a deadlock victim: read again, to answer the record as it stands.
                Ok(None) => {}
                Err(error) if is_deadlock(&error) => {}
                Err(error) => return Err(map_sqlx(error)),
            }
        }
        Err(RepositoryError::Backend(Box::new(ClaimRace {
            target: request.target.to_owned(),
            key: request.key.to_owned(),
            tries: CLAIM_TRIES,
        })))
    }
    async fn complete(
        &self,
        session: MySqlSession,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<Completion, RepositoryError> {
        let mut tx = match session.take().await {
            Some(State::Open(tx)) => tx,
            // The operation never opened its transaction: one autocommitted statement.
            Some(State::Idle(mut connection)) => {
                let updated = self.complete_on(&mut *connection, id, lease, result).await;
                drop(connection);
                return match updated {
                    Ok(1) => Ok(Completion::Done),
                    Ok(_) => self.classify(id, lease).await,
                    // The claim's connection may have been dropped while the operation ran
                    // (an idle timeout, a proxy). Nothing was in a transaction on it, and the
                    // statement is a compare-and-set: it runs again, on another connection.
                    Err(_) => self.complete_detached(&session, id, lease, result).await,
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
        session: MySqlSession,
        id: RecordId<'_>,
        lease: Lease,
        failure: Failure<'_>,
    ) -> Result<Completion, RepositoryError> {
        if let Some(State::Open(tx)) = session.take().await {
            session::rollback(tx).await;
        }
        self.fail_attempt(id, lease, failure).await
    }

    /// The update on the server's clock, then a read of the timeout it set (MariaDB has no
    /// `UPDATE … RETURNING`), both on one connection. No push: waiting calls poll.
    async fn renew(
        &self,
        id: RecordId<'_>,
        lease: Lease,
        lease_for: Duration,
    ) -> Result<Renewal, RepositoryError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        let updated = sqlx::query(SQL.renew.as_str())
            .bind(micros(lease_for))
            .bind(id.target)
            .bind(id.key)
            .bind(lease.attempt)
            .bind(lease.claim)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        if updated.rows_affected() == 0 {
            return Ok(Renewal::Lost);
        }
        let until: Option<DateTime<Utc>> = sqlx::query_scalar(SQL.renewed.as_str())
            .bind(id.target)
            .bind(id.key)
            .bind(lease.claim)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        Ok(until.map_or(Renewal::Lost, |until| Renewal::Renewed { until }))
    }

    async fn get(
        &self,
        target: &str,
        key: &str,
    ) -> Result<Option<TrackedOperation>, RepositoryError> {
        let row = sqlx::query(SQL.get.as_str())
            .bind(target)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?;
        row.as_ref().map(decode).transpose()
    }
}

/// Reads a record from the columns the statements select.
fn decode(row: &MySqlRow) -> Result<TrackedOperation, RepositoryError> {
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
        error_count: row.try_get("error_count").map_err(map_sqlx)?,
        attempt: row.try_get("attempt").map_err(map_sqlx)?,
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

/// An error message cut to at most [`MAX_ERROR_LEN`] bytes, on a character boundary.
fn storable(message: &str) -> &str {
    let mut end = message.len().min(MAX_ERROR_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

impl Maintenance for MySqlRepository {
    async fn forget(&self, id: RecordId<'_>, force: bool) -> Result<Forgotten, RepositoryError> {
        let deleted = sqlx::query(SQL.forget.as_str())
            .bind(id.target)
            .bind(id.key)
            .bind(force)
            .execute(&self.pool)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        if deleted > 0 {
            return Ok(Forgotten::Deleted);
        }
        // Not deleted: absent, or held. A record claimed in between reads as held, which is
        // what it is now.
        let row = sqlx::query(SQL.held.as_str())
            .bind(id.target)
            .bind(id.key)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?;
        let Some(row) = row else {
            return Ok(Forgotten::NotFound);
        };
        Ok(Forgotten::Held {
            timeout: row.try_get("timeout").map_err(map_sqlx)?,
        })
    }

    async fn stats(&self) -> Result<Stats, RepositoryError> {
        let rows = sqlx::query(SQL.stats.as_str())
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
    fn stored_errors_are_bounded() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = storable(&long);
        assert!(cut.len() <= MAX_ERROR_LEN && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn long_keys_are_refused_by_name() {
        assert!(check_len("a key", &"k".repeat(MAX_KEY_LEN), MAX_KEY_LEN).is_ok());
        let error = check_len("a key", &"k".repeat(MAX_KEY_LEN + 1), MAX_KEY_LEN);
        assert!(matches!(error, Err(RepositoryError::Backend(e)) if e.to_string().contains("256")));
    }
}
