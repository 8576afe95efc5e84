//! [`SqliteRepository`]: the SQLite [`IdempotencyRepository`].

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use ana_core::chrono::{DateTime, Utc};
use ana_core::{
    Claim, ClaimRequest, Cleaned, Completion, Failure, FailureKind, Fingerprint, Forgotten,
    IdempotencyRepository, Lease, Maintenance, RecordId, Renewal, RepositoryError, Stats, Status,
    TrackedOperation,
};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, SqliteConnection, SqliteExecutor, SqlitePool};

use crate::error::{ClaimRace, is_busy, map_sqlx};
use crate::schema::{self, SQL};
use crate::session::{self, SqliteSession, State};

/// How many times a claim reads and writes again when a concurrent claim changed the record
/// between its read and its write.
const CLAIM_TRIES: u32 = 3;

/// How long one try of a claim's write waits for SQLite's write lock before it reads the
/// record again (the busy timeout bounds all tries together).
const CLAIM_SLICE_MS: i64 = 20;

/// A timeout is capped at 100 years.
const MAX_TIMEOUT_MICROS: i64 = 100 * 366 * 24 * 3600 * 1_000_000;

/// Stored error messages are cut to this many bytes.
const MAX_ERROR_LEN: usize = 8 * 1024;

/// How long [`SqliteRepository::connect`] lets a statement wait for the write lock.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A SQLite [`IdempotencyRepository`] on a sqlx [`SqlitePool`], whose sessions are
/// `BEGIN IMMEDIATE` transactions ([`SqliteSession`]).
///
/// - Records live in `ana_tracked_operations`; create it with [`migrate`](Self::migrate).
/// - [`claim`](IdempotencyRepository::claim) reads the record first, and answers a record
///   that may not run again (Finished, held, expired, another payload) from that read: no
///   write, no lock. Otherwise one statement,
///   `INSERT … ON CONFLICT DO UPDATE … WHERE <may run again> RETURNING`, creates or takes
///   over the record on SQLite's clock.
/// - [`complete`](IdempotencyRepository::complete) marks the record Finished inside the
///   session's transaction and commits; [`fail`](IdempotencyRepository::fail) rolls it back
///   and records the failure. Both are compare-and-set on the [`Lease`].
/// - [`fail_timed_out`](Self::fail_timed_out), [`delete_expired`](Self::delete_expired) and
///   [`spawn_cleanup`](Self::spawn_cleanup) keep the table small.
///
/// Clones share the pool.
#[derive(Clone)]
pub struct SqliteRepository {
    pool: SqlitePool,
    retention: Duration,
}

impl fmt::Debug for SqliteRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteRepository")
            .field("retention", &self.retention)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

/// What a claim's write found.
enum Written {
    Acquired(Lease),
    Existing(TrackedOperation, DateTime<Utc>),
    /// The record read is claimable again (a holder failed meanwhile): read and write again.
    Again,
}

impl SqliteRepository {
    /// A repository on `pool`. Give the pool's connections WAL and a busy timeout (as
    /// [`connect`](Self::connect) does): without WAL a reader waits for the writer, and
    /// without a busy timeout a claim fails at once while another call's transaction is open.
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            retention: Duration::ZERO,
        }
    }

    /// Opens `url` (`sqlite://path/to/file.db`, created if missing, or `sqlite::memory:`) with
    /// the settings this store is built for, and returns a repository on it (not migrated yet).
    ///
    /// A file gets WAL (readers never wait for the writer), `synchronous = FULL` (a committed
    /// record survives a power cut), a busy timeout of [`DEFAULT_BUSY_TIMEOUT`] and a pool of
    /// 8 connections. `sqlite::memory:` gets one connection, kept for the pool's whole life
    /// (the database lives as long as a connection to it): calls then take turns on it.
    ///
    /// # Errors
    ///
    /// A URL sqlx cannot parse ([`RepositoryError::Backend`]), or a file that cannot be opened
    /// ([`RepositoryError::Unavailable`]).
    pub async fn connect(url: &str) -> Result<Self, RepositoryError> {
        let in_memory = is_memory_url(url);
        let options = SqliteConnectOptions::from_str(url)
            .map_err(map_sqlx)?
            .create_if_missing(true)
            .busy_timeout(DEFAULT_BUSY_TIMEOUT);
        let (options, pool) = if in_memory {
            (
                options,
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None),
            )
        } else {
            (
                options
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full),
                SqlitePoolOptions::new().max_connections(8),
            )
        };
        let pool = pool
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(map_sqlx)?;
        Ok(Self::new(pool))
    }

    /// Keeps expired records `retention` longer before [`delete_expired`](Self::delete_expired)
    /// removes them (default: none). A Finished record replays until it is deleted.
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates the `ana_tracked_operations` table, its indexes and the claim counter,
    /// applying the embedded migrations the database lacks.
    ///
    /// Safe to run at every start, from several processes at once: the migrations run in one
    /// `BEGIN IMMEDIATE` transaction, and applied versions are recorded in
    /// `ana_schema_migrations`.
    ///
    /// # Errors
    ///
    /// The database's refusal or unavailability.
    pub async fn migrate(&self) -> Result<(), RepositoryError> {
        let conn = self.pool.acquire().await.map_err(map_sqlx)?;
        schema::migrate(conn).await
    }

    /// SQLite's clock, the one every deadline of the store is set and compared on.
    ///
    /// # Errors
    ///
    /// The database's refusal or unavailability.
    pub async fn now(&self) -> Result<DateTime<Utc>, RepositoryError> {
        let micros: i64 = sqlx::query_scalar(SQL.now.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        time(micros).ok_or_else(|| RepositoryError::Corrupt {
            detail: format!("SQLite's clock reads {micros}"),
        })
    }

    /// Marks Failed ([`FailureKind::TimedOut`] with its message, error count + 1) up to `limit`
    /// Running records whose timeout has passed. Returns how many changed.
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
            .bind(i64::from(limit))
            .bind(FailureKind::TimedOut.message())
            .bind(FailureKind::TimedOut.as_str())
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(map_sqlx)
    }

    /// Deletes up to `limit` records whose expiration passed more than the retention ago.
    /// Returns how many went.
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
        let done = sqlx::query(SQL.fail.as_str())
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
        executor: impl SqliteExecutor<'_>,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(SQL.complete.as_str())
            .bind(id.target)
            .bind(id.key)
            .bind(token(lease.attempt))
            .bind(result)
            .bind(claim_number(lease.claim))
            .execute(executor)
            .await
            .map(|done| done.rows_affected())
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
            .bind(id.target)
            .bind(id.key)
            .bind(token(lease.attempt))
            .bind(FailureKind::Expired.message())
            .bind(claim_number(lease.claim))
            .bind(FailureKind::Expired.as_str())
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
            .bind(claim_number(lease.claim))
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        let present: bool = row.try_get("present").map_err(map_sqlx)?;
        let finished: bool = row.try_get("finished").map_err(map_sqlx)?;
        Ok(if finished {
            Completion::Done
        } else if !present {
            Completion::Expired
        } else {
            Completion::Superseded
        })
    }

    /// Reads the record: `Some` when it may not run again (the claim's answer), `None` when
    /// it is missing or claimable.
    async fn read(
        conn: &mut SqliteConnection,
        request: &ClaimRequest<'_>,
    ) -> Result<Option<(TrackedOperation, DateTime<Utc>)>, RepositoryError> {
        Ok(match Self::find(conn, request).await? {
            Found::Standing(record, now) => Some((*record, now)),
            Found::Claimable(_) => None,
        })
    }

    /// The record as it stands when it may not run again, else the status of the one there
    /// (`None`: none), which the claim reports as what it took over.
    async fn find(
        conn: &mut SqliteConnection,
        request: &ClaimRequest<'_>,
    ) -> Result<Found, RepositoryError> {
        let row = sqlx::query(SQL.read.as_str())
            .bind(request.target)
            .bind(request.key)
            .bind(&request.fingerprint.as_bytes()[..])
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        let Some(row) = row else {
            return Ok(Found::Claimable(None));
        };
        let claimable: bool = row.try_get("claimable").map_err(map_sqlx)?;
        let record = decode(&row)?;
        if claimable {
            return Ok(Found::Claimable(Some(record.status)));
        }
        Ok(Found::Standing(Box::new(record), now_of(&row)?))
    }

    /// The claim's write, waiting for SQLite's write lock in slices of [`CLAIM_SLICE_MS`]
    /// and reading the record again between them: a concurrent first claim of the same key
    /// that committed meanwhile answers this one at once (held: still running), instead of
    /// this claim waiting for the holder's whole transaction. Waits at most the connection's
    /// busy timeout in all.
    async fn write(
        conn: &mut ClaimConnection,
        request: &ClaimRequest<'_>,
    ) -> Result<Written, RepositoryError> {
        let busy_ms: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn.connection)
            .await
            .map_err(map_sqlx)?;
        conn.lowered = true;
        set_busy_timeout(&mut conn.connection, busy_ms.min(CLAIM_SLICE_MS)).await?;
        let written = Self::write_in_slices(&mut conn.connection, request, busy_ms).await;
        set_busy_timeout(&mut conn.connection, busy_ms).await?;
        conn.lowered = false;
        written
    }

    async fn write_in_slices(
        conn: &mut SqliteConnection,
        request: &ClaimRequest<'_>,
        busy_ms: i64,
    ) -> Result<Written, RepositoryError> {
        let deadline = Instant::now() + Duration::from_millis(u64::try_from(busy_ms).unwrap_or(0));
        loop {
            let row = sqlx::query(SQL.claim.as_str())
                .bind(request.target)
                .bind(request.key)
                .bind(&request.fingerprint.as_bytes()[..])
                .bind(request.reference_time.timestamp_micros())
                .bind(request.timeout.map(micros))
                .bind(request.expiration.map(|at| at.timestamp_micros()))
                .fetch_optional(&mut *conn)
                .await;
            match row {
                Ok(Some(row)) => {
                    let record = decode(&row)?;
                    let claim: Option<i64> = row.try_get("claim").map_err(map_sqlx)?;
                    let claim = claim
                        .and_then(|claim| u64::try_from(claim).ok())
                        .ok_or_else(|| RepositoryError::Corrupt {
                            detail: format!(
                                "record {}/{}: claim number {claim:?}",
                                request.target, request.key
                            ),
                        })?;
                    return Ok(Written::Acquired(Lease {
                        attempt: record.attempt,
                        claim,
                    }));
                }
                // The conflict arm's condition did not hold on the row under the lock.
                Ok(None) => {
                    return Ok(match Self::read(conn, request).await? {
                        Some((record, now)) => Written::Existing(record, now),
                        None => Written::Again,
                    });
                }
                Err(error) if is_busy(&error) => {
                    if let Some((record, now)) = Self::read(conn, request).await? {
                        return Ok(Written::Existing(record, now));
                    }
                    if Instant::now() >= deadline {
                        return Err(map_sqlx(error));
                    }
                }
                Err(error) => return Err(map_sqlx(error)),
            }
        }
    }
}

async fn set_busy_timeout(conn: &mut SqliteConnection, ms: i64) -> Result<(), RepositoryError> {
    sqlx::query(AssertSqlSafe(format!("PRAGMA busy_timeout = {ms}")))
        .execute(conn)
        .await
        .map(drop)
        .map_err(map_sqlx)
}

/// The connection of a claim. Dropped while its busy timeout is lowered to
/// [`CLAIM_SLICE_MS`] (a claim cancelled while it waits for the write lock, say by a client
/// hanging up, or a failed restore), it is closed instead of going back to the pool: pooled,
/// every statement on it would give up on the write lock after a few milliseconds
/// ("database is locked"), and the next claim would read that timeout as the one to restore.
struct ClaimConnection {
    connection: PoolConnection<Sqlite>,
    lowered: bool,
}

impl Drop for ClaimConnection {
    fn drop(&mut self) {
        if self.lowered {
            self.connection.close_on_drop();
        }
    }
}

/// What the claim's first read found.
enum Found {
    /// A record that may not run again: the claim's answer.
    Standing(Box<TrackedOperation>, DateTime<Utc>),
    /// None, or one the claim may take over, with its status.
    Claimable(Option<Status>),
}

impl IdempotencyRepository for SqliteRepository {
    type Session = SqliteSession;

    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn claim(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Result<Claim<SqliteSession>, RepositoryError> {
        let mut conn = ClaimConnection {
            connection: self.pool.acquire().await.map_err(map_sqlx)?,
            lowered: false,
        };
        for _ in 0..CLAIM_TRIES {
            let previous = match Self::find(&mut conn.connection, request).await? {
                Found::Standing(record, now) => {
                    return Ok(Claim::Existing {
                        record: *record,
                        now,
                    });
                }
                Found::Claimable(previous) => previous,
            };
            match Self::write(&mut conn, request).await {
                Ok(Written::Acquired(lease)) => {
                    // Committed. The operation's transaction opens on a pooled connection
                    // when first asked for; this one goes back now.
                    drop(conn);
                    return Ok(Claim::Acquired {
                        lease,
                        session: SqliteSession::new(self.pool.clone(), lease.attempt),
                        previous,
                    });
                }
                Ok(Written::Existing(record, now)) => return Ok(Claim::Existing { record, now }),
                Ok(Written::Again) => {}
                // A connection whose busy timeout was not restored is closed on drop.
                Err(error) => return Err(error),
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
        session: SqliteSession,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<Completion, RepositoryError> {
        let mut tx = match session.take().await {
            Some(State::Open(tx)) => tx,
            // The operation never opened its transaction: one autocommitted statement.
            Some(State::Idle | State::Detached) => {
                // On an error the session is left detached, so that a finish tried again runs
                // the statement again: nothing was in a transaction, the statement is a
                // compare-and-set, and a record this lease finished already answers Done.
                return match self.complete_on(&self.pool, id, lease, result).await {
                    Ok(1) => Ok(Completion::Done),
                    Ok(_) => self.classify(id, lease).await,
                    Err(error) => {
                        session.detach().await;
                        Err(map_sqlx(error))
                    }
                };
            }
            Some(State::BeginFailed) => {
                self.fail_quietly(id, lease, FailureKind::BeginFailed).await;
                return Err(RepositoryError::SessionClosed);
            }
            // Tried again once its transaction ended (a `COMMIT` whose answer was lost): done
            // when that commit went through, else the transaction's work is gone with it.
            None => {
                return match self.classify(id, lease).await? {
                    Completion::Done => Ok(Completion::Done),
                    Completion::Superseded | Completion::Expired => {
                        Err(RepositoryError::SessionClosed)
                    }
                };
            }
        };
        match self.complete_on(&mut *tx, id, lease, result).await {
            Ok(1) => match session::commit(tx).await {
                Ok(()) => Ok(Completion::Done),
                Err(error) => {
                    self.fail_quietly(id, lease, FailureKind::CommitFailed)
                        .await;
                    Err(error)
                }
            },
            Ok(_) => {
                // Rolled back even if this fails (the connection is then closed).
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
        session: SqliteSession,
        id: RecordId<'_>,
        lease: Lease,
        failure: Failure<'_>,
    ) -> Result<Completion, RepositoryError> {
        if let Some(State::Open(tx)) = session.take().await {
            // Released before the failure is written: the write needs the lock it holds.
            session::rollback(tx).await;
        }
        self.fail_attempt(id, lease, failure).await
    }

    /// One statement on SQLite's clock; no push: waiting calls poll.
    async fn renew(
        &self,
        id: RecordId<'_>,
        lease: Lease,
        lease_for: Duration,
    ) -> Result<Renewal, RepositoryError> {
        let timeout: Option<i64> = sqlx::query_scalar(SQL.renew.as_str())
            .bind(id.target)
            .bind(id.key)
            .bind(token(lease.attempt))
            .bind(claim_number(lease.claim))
            .bind(micros(lease_for))
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(match timeout.and_then(time) {
            Some(until) => Renewal::Renewed { until },
            None => Renewal::Lost,
        })
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

/// Whether `url` names an in-memory database.
fn is_memory_url(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

fn now_of(row: &SqliteRow) -> Result<DateTime<Utc>, RepositoryError> {
    let micros: i64 = row.try_get("now").map_err(map_sqlx)?;
    time(micros).ok_or_else(|| RepositoryError::Corrupt {
        detail: format!("SQLite's clock reads {micros}"),
    })
}

/// Microseconds since the epoch as a time.
fn time(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
}

/// Reads a record from the columns the statements select.
fn decode(row: &SqliteRow) -> Result<TrackedOperation, RepositoryError> {
    let target: String = row.try_get("target").map_err(map_sqlx)?;
    let key: String = row.try_get("key").map_err(map_sqlx)?;
    let corrupt = |what: String| RepositoryError::Corrupt {
        detail: format!("record {target}/{key}: {what}"),
    };
    let at = |column: &str| -> Result<Option<DateTime<Utc>>, RepositoryError> {
        let micros: Option<i64> = row.try_get(column).map_err(map_sqlx)?;
        micros
            .map(|micros| time(micros).ok_or_else(|| corrupt(format!("{column} {micros}"))))
            .transpose()
    };
    let status: String = row.try_get("status").map_err(map_sqlx)?;
    let status: Status = status.parse().map_err(|e| corrupt(format!("{e}")))?;
    let fingerprint: Vec<u8> = row.try_get("fingerprint").map_err(map_sqlx)?;
    let fingerprint = Fingerprint::from_slice(&fingerprint)
        .ok_or_else(|| corrupt(format!("fingerprint of {} bytes", fingerprint.len())))?;
    let error_count: i64 = row.try_get("error_count").map_err(map_sqlx)?;
    let error_count =
        u32::try_from(error_count).map_err(|_| corrupt(format!("error count {error_count}")))?;
    let attempt: i64 = row.try_get("attempt").map_err(map_sqlx)?;
    let attempt = u64::try_from(attempt).map_err(|_| corrupt(format!("attempt {attempt}")))?;
    let failure: Option<String> = row.try_get("failure").map_err(map_sqlx)?;
    let failure = failure
        .map(|name| name.parse::<FailureKind>())
        .transpose()
        .map_err(|e| corrupt(format!("{e}")))?;
    let reference_time =
        at("reference_time")?.ok_or_else(|| corrupt("no reference time".into()))?;
    Ok(TrackedOperation {
        status,
        fingerprint,
        reference_time,
        started_at: at("started_at")?,
        timeout: at("timeout")?,
        expiration: at("expiration")?,
        result: row.try_get("result").map_err(map_sqlx)?,
        error: row.try_get("error").map_err(map_sqlx)?,
        failure,
        finished_at: at("finished_at")?,
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

/// The claim number as stored (positive); a number beyond the column's range is NULL, which
/// matches no record.
fn claim_number(claim: u64) -> Option<i64> {
    i64::try_from(claim).ok()
}

/// An error message cut to at most [`MAX_ERROR_LEN`] bytes, on a character boundary.
fn storable(message: &str) -> &str {
    let mut end = message.len().min(MAX_ERROR_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

impl Maintenance for SqliteRepository {
    async fn forget(&self, id: RecordId<'_>, force: bool) -> Result<Forgotten, RepositoryError> {
        // SQLite runs one writer at a time, so the delete decides on the record as it stands;
        // the read after it only tells an absent record from a held one.
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
        let row = sqlx::query(SQL.held.as_str())
            .bind(id.target)
            .bind(id.key)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?;
        let Some(row) = row else {
            return Ok(Forgotten::NotFound);
        };
        let timeout: Option<i64> = row.try_get("timeout").map_err(map_sqlx)?;
        Ok(Forgotten::Held {
            timeout: timeout.and_then(time),
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
            let status = Status::from_str(&status).map_err(|error| RepositoryError::Corrupt {
                detail: error.to_string(),
            })?;
            let records: i64 = row.try_get("records").map_err(map_sqlx)?;
            let timed_out: f64 = row.try_get("timed_out").map_err(map_sqlx)?;
            let expired: f64 = row.try_get("expired").map_err(map_sqlx)?;
            stats.count(status, u64::try_from(records).unwrap_or(0));
            // `total()` sums to a float; the counts are whole and far below 2^53.
            stats.timed_out += timed_out as u64;
            stats.expired += expired as u64;
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
    fn claim_numbers_never_wrap() {
        assert_eq!(claim_number(42), Some(42));
        assert_eq!(claim_number(u64::MAX), None);
        assert_eq!(token(u64::MAX), -1);
    }

    #[test]
    fn stored_errors_are_bounded() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = storable(&long);
        assert!(cut.len() <= MAX_ERROR_LEN && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn memory_urls_are_recognised() {
        assert!(is_memory_url("sqlite::memory:"));
        assert!(is_memory_url("sqlite://?mode=memory"));
        assert!(!is_memory_url("sqlite://ana.db"));
    }
}
