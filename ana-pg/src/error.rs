//! sqlx errors as [`RepositoryError`]s.

use ana_core::RepositoryError;

/// Classifies a driver error: the server out of reach is `Unavailable`, a row that does not
/// decode is `Corrupt`, anything else the server or driver said is `Backend`. The sqlx error
/// is kept as the source (its text, for `Corrupt`, which has no source).
pub(crate) fn map_sqlx(error: sqlx::Error) -> RepositoryError {
    match &error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => RepositoryError::Unavailable(Box::new(error)),
        sqlx::Error::Database(db) if is_unavailable(db.code().as_deref()) => {
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

/// SQLSTATE classes meaning the server cannot serve now: connection exceptions (08),
/// insufficient resources (53, e.g. too many connections) and operator intervention (57,
/// e.g. shutting down), except 57014 (a statement cancelled on request or timeout).
fn is_unavailable(code: Option<&str>) -> bool {
    code.is_some_and(|code| {
        (code.starts_with("08") || code.starts_with("53") || code.starts_with("57"))
            && code != "57014"
    })
}

/// A claim statement kept losing races: each try, a concurrent claim created the record after
/// its snapshot (no row), or took over the record it read (a stale answer).
#[derive(Debug, thiserror::Error)]
#[error("the claim of {target}/{key} lost to concurrent claims {tries} times")]
pub(crate) struct ClaimRace {
    pub(crate) target: String,
    pub(crate) key: String,
    pub(crate) tries: u32,
}

/// A forget statement kept reading a record that changed under it: each try, a concurrent
/// claim or delete changed the record after its snapshot.
#[derive(Debug, thiserror::Error)]
#[error("forgetting {target}/{key} lost to concurrent changes {tries} times")]
pub(crate) struct ForgetRace {
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
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            assert!(matches!(map_sqlx(error), RepositoryError::Unavailable(_)));
        }
        assert!(is_unavailable(Some("08006")));
        assert!(is_unavailable(Some("57P01")));
        assert!(is_unavailable(Some("53300")));
        assert!(!is_unavailable(Some("57014")));
        assert!(!is_unavailable(Some("23505")));
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
