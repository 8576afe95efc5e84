//! [`CliError`]: everything that stops a command, printed on one line.

use std::error::Error as _;

use ana_core::RepositoryError;

/// Why a command did not run to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Neither store option nor variable.
    #[error("no store: pass --database-url or --redis-url (or set DATABASE_URL or REDIS_URL)")]
    NoStore,
    /// Two stores named the same way.
    #[error("{from} are both set: name one store, with --database-url or --redis-url")]
    TwoStores {
        /// Which options or variables.
        from: &'static str,
    },
    /// A URL that is not one.
    #[error("bad store URL {url}: {reason}")]
    BadUrl {
        /// The URL, its password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A URL of a store this command does not know.
    #[error("unsupported store URL {url}: expected postgres://, redis://, sqlite:// or mysql://")]
    UnsupportedScheme {
        /// The URL, its password hidden.
        url: String,
    },
    /// An option of another store.
    #[error("{option} does not apply to {store}")]
    NotForStore {
        /// The option.
        option: &'static str,
        /// The store named by the URL.
        store: &'static str,
    },
    /// The Postgres schema name is not a plain identifier.
    #[error(transparent)]
    Schema(#[from] ana_pg::InvalidSchemaName),
    /// The store failed or could not be reached.
    #[error("{store} at {url}")]
    Store {
        /// The store's kind.
        store: &'static str,
        /// The URL, its password hidden.
        url: String,
        /// What the store answered.
        #[source]
        source: RepositoryError,
    },
    /// No Tokio runtime could be built.
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
}

/// `error` and its sources, joined by `: `, on one line.
pub(crate) fn one_line(error: &CliError) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some drivers repeat their source's text in their own.
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `url` with the password of its user info replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = match user_info.split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None => user_info.to_owned(),
            };
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x?sslmode=require"),
            "postgres://u:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact("redis://:pw@cache/0"), "redis://:***@cache/0");
        assert_eq!(redact("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn errors_print_on_one_line_with_their_sources() {
        let error = CliError::Store {
            store: "Redis",
            url: "redis://127.0.0.1:1".into(),
            source: RepositoryError::Unavailable("connection\nrefused".into()),
        };
        assert_eq!(
            one_line(&error),
            "Redis at redis://127.0.0.1:1: the idempotency store is unavailable: connection refused"
        );
    }
}
