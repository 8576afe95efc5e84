//! sqlx errors as [`RepositoryError`]s.

use ana_core::RepositoryError;
use sqlx::mysql::MySqlDatabaseError;

/// InnoDB chose this statement as a deadlock's victim and rolled it back.
const ER_LOCK_DEADLOCK: u16 = 1213;

/// Classifies a driver error: the server out of reach (pool, I/O, TLS, or a server error
/// meaning "not now") is `Unavailable`, a row that does not decode is `Corrupt`, anything
/// else is `Backend`. The sqlx error is kept as the source (its text, for `Corrupt`).
pub(crate) fn map_sqlx(error: sqlx::Error) -> RepositoryError {
    match &error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => RepositoryError::Unavailable(Box::new(error)),
        sqlx::Error::Database(_) if is_unavailable(number(&error)) => {
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

/// The server's error number, for a server error.
fn number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// Server errors meaning it cannot serve now: too many connections (1040, 1203), shutting
/// down (1053), a lock wait timed out (1205), the query or connection killed (1317, 1927),
/// disconnected for inactivity (4031).
fn is_unavailable(number: Option<u16>) -> bool {
    matches!(number, Some(1040 | 1053 | 1203 | 1205 | 1317 | 1927 | 4031))
}

/// Whether InnoDB rolled the statement back as a deadlock victim (safe to run again).
pub(crate) fn is_deadlock(error: &sqlx::Error) -> bool {
    number(error) == Some(ER_LOCK_DEADLOCK)
}

/// A claim kept losing races: each try, a concurrent claim changed the record between the
/// read and the write, or InnoDB picked the claim as a deadlock victim.
#[derive(Debug, thiserror::Error)]
#[error("the claim of {target}/{key} lost to concurrent claims {tries} times")]
pub(crate) struct ClaimRace {
    pub(crate) target: String,
    pub(crate) key: String,
    pub(crate) tries: u32,
}

/// A target or key longer than the table's columns hold.
#[derive(Debug, thiserror::Error)]
#[error("{what} of {len} characters is longer than the {max} ana-mysql stores")]
pub(crate) struct TooLong {
    pub(crate) what: &'static str,
    pub(crate) len: usize,
    pub(crate) max: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_io_errors_are_unavailable() {
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            assert!(matches!(map_sqlx(error), RepositoryError::Unavailable(_)));
        }
        for number in [1040, 1053, 1205, 1927, 4031] {
            assert!(is_unavailable(Some(number)), "{number}");
        }
        assert!(!is_unavailable(Some(1062)), "a duplicate key is no outage");
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
