//! sqlx errors as [`RepositoryError`]s.

use ana_core::RepositoryError;

/// SQLite primary result codes that mean "not now" rather than "wrong".
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_NOMEM: i32 = 7;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;

/// Classifies a driver error: the database out of reach (pool, I/O, the file unopenable, the
/// write lock not had within the busy timeout, the disk full) is `Unavailable`, a row that
/// does not decode is `Corrupt`, anything else is `Backend`. The sqlx error is kept as the
/// source (its text, for `Corrupt`, which has no source).
pub(crate) fn map_sqlx(error: sqlx::Error) -> RepositoryError {
    match &error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => RepositoryError::Unavailable(Box::new(error)),
        sqlx::Error::Database(_) if is_unavailable(primary_code(&error)) => {
            RepositoryError::Unavailable(Box::new(error))
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => RepositoryError::Corrupt {
            detail: error.to_string(),
        },
        _ => RepositoryError::Backend(Box::new(error)),
    }
}

/// The primary result code of a SQLite error (sqlx reports the extended one).
fn primary_code(error: &sqlx::Error) -> Option<i32> {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .map(|code| code & 0xff),
        _ => None,
    }
}

fn is_unavailable(code: Option<i32>) -> bool {
    matches!(
        code,
        Some(
            SQLITE_BUSY
                | SQLITE_LOCKED
                | SQLITE_NOMEM
                | SQLITE_IOERR
                | SQLITE_FULL
                | SQLITE_CANTOPEN
        )
    )
}

/// Whether the error is SQLite's "the write lock is held by another connection".
pub(crate) fn is_busy(error: &sqlx::Error) -> bool {
    primary_code(error) == Some(SQLITE_BUSY)
}

/// A claim kept losing races: each try, a concurrent claim changed the record between the
/// read and the write.
#[derive(Debug, thiserror::Error)]
#[error("the claim of {target}/{key} lost to concurrent claims {tries} times")]
pub(crate) struct ClaimRace {
    pub(crate) target: String,
    pub(crate) key: String,
    pub(crate) tries: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_io_errors_are_unavailable() {
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        ] {
            assert!(matches!(map_sqlx(error), RepositoryError::Unavailable(_)));
        }
        for code in [5, 6, 10, 13, 14] {
            assert!(is_unavailable(Some(code)), "{code}");
        }
        assert!(!is_unavailable(Some(19)), "a constraint is no outage");
        assert!(!is_unavailable(None));
    }

    #[test]
    fn decode_errors_are_corrupt_and_others_backend() {
        let corrupt = map_sqlx(sqlx::Error::ColumnNotFound("status".into()));
        assert!(
            matches!(corrupt, RepositoryError::Corrupt { detail } if detail.contains("status"))
        );
        let backend = map_sqlx(sqlx::Error::Protocol("unexpected message".into()));
        assert!(
            matches!(backend, RepositoryError::Backend(source) if source.to_string().contains("unexpected"))
        );
    }
}
