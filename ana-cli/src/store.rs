//! [`Store`]: the store a URL names, by its scheme. Another store plugs in as one more variant
//! and one more scheme in [`Store::open`].

use std::str::FromStr;
use std::time::Duration;

use ana_core::{
    Cleaned, Forgotten, IdempotencyRepository, Maintenance, RecordId, RepositoryError, Stats,
    TrackedOperation,
};
use ana_mysql::MySqlRepository;
use ana_mysql::sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use ana_pg::PgRepository;
use ana_pg::sqlx::Connection as _;
use ana_pg::sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use ana_redis::RedisRepository;
use ana_redis::deadpool_redis::{self, PoolConfig, Runtime, Timeouts};
use ana_sqlite::SqliteRepository;
use ana_sqlite::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::error::{CliError, redact};

/// The options that name where records are kept in a store.
#[derive(Debug)]
pub(crate) struct StoreOptions {
    /// The Postgres schema (default `ana`).
    pub(crate) schema: Option<String>,
    /// The Redis key prefix (default `ana:`).
    pub(crate) prefix: Option<String>,
    /// How long to wait for a connection.
    pub(crate) connect_timeout: Duration,
}

/// A store, opened from its URL. No connection is made until the first command.
#[derive(Debug)]
pub(crate) enum Store {
    Postgres {
        repository: PgRepository,
        url: String,
        connect: Box<PgConnectOptions>,
        timeout: Duration,
    },
    Redis {
        repository: RedisRepository,
        url: String,
    },
    Sqlite {
        repository: SqliteRepository,
        url: String,
    },
    MySql {
        repository: MySqlRepository,
        url: String,
    },
}

/// Runs `$call` on the store's repository, bound to `$repository`, naming the store in an
/// error. Every variant's repository implements [`Maintenance`].
macro_rules! on_store {
    ($store:expr, $repository:ident => $call:expr) => {{
        let result = match $store {
            Store::Postgres {
                repository: $repository,
                ..
            } => $call.await,
            Store::Redis {
                repository: $repository,
                ..
            } => $call.await,
            Store::Sqlite {
                repository: $repository,
                ..
            } => $call.await,
            Store::MySql {
                repository: $repository,
                ..
            } => $call.await,
        };
        result.map_err(|source| $store.error(source))
    }};
}

impl Store {
    /// The store named by `url`'s scheme: `postgres://` (or `postgresql://`), `redis://` (or
    /// `rediss://`, `redis+unix://`; comma-separated URLs for a cluster), `sqlite://file.db`,
    /// `mysql://` (or `mariadb://`).
    pub(crate) fn open(url: &str, options: &StoreOptions) -> Result<Self, CliError> {
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => Self::postgres(url, options),
            Some("redis" | "rediss" | "redis+unix" | "unix") => Self::redis(url, options),
            Some("mysql" | "mariadb") => Self::mysql(url, options),
            _ if url.starts_with("sqlite:") => Self::sqlite(url, options),
            _ => Err(CliError::UnsupportedScheme { url: redact(url) }),
        }
    }

    fn postgres(url: &str, options: &StoreOptions) -> Result<Self, CliError> {
        if options.prefix.is_some() {
            return Err(CliError::NotForStore {
                option: "--prefix",
                store: "Postgres",
            });
        }
        let connect = PgConnectOptions::from_str(url).map_err(|error| CliError::BadUrl {
            url: redact(url),
            reason: error.to_string(),
        })?;
        let connect = connect.application_name("ana-cli");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.connect_timeout)
            .connect_lazy_with(connect.clone());
        let schema = options.schema.as_deref().unwrap_or(ana_pg::DEFAULT_SCHEMA);
        Ok(Self::Postgres {
            repository: PgRepository::with_schema(pool, schema)?,
            url: redact(url),
            connect: Box::new(connect),
            timeout: options.connect_timeout,
        })
    }

    fn no_store_options(options: &StoreOptions, store: &'static str) -> Result<(), CliError> {
        if options.schema.is_some() {
            return Err(CliError::NotForStore {
                option: "--schema",
                store,
            });
        }
        if options.prefix.is_some() {
            return Err(CliError::NotForStore {
                option: "--prefix",
                store,
            });
        }
        Ok(())
    }

    /// An existing SQLite file (`sqlite://ana.db`): never created, an operator's typo must
    /// not make an empty database.
    fn sqlite(url: &str, options: &StoreOptions) -> Result<Self, CliError> {
        Self::no_store_options(options, "SQLite")?;
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|error| CliError::BadUrl {
                url: redact(url),
                reason: error.to_string(),
            })?
            .create_if_missing(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.connect_timeout)
            .connect_lazy_with(connect);
        Ok(Self::Sqlite {
            repository: SqliteRepository::new(pool),
            url: redact(url),
        })
    }

    fn mysql(url: &str, options: &StoreOptions) -> Result<Self, CliError> {
        Self::no_store_options(options, "MySQL")?;
        let url = url.replacen("mariadb:", "mysql:", 1);
        let connect = MySqlConnectOptions::from_str(&url).map_err(|error| CliError::BadUrl {
            url: redact(&url),
            reason: error.to_string(),
        })?;
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.connect_timeout)
            .connect_lazy_with(connect);
        Ok(Self::MySql {
            repository: MySqlRepository::new(pool),
            url: redact(&url),
        })
    }

    fn redis(url: &str, options: &StoreOptions) -> Result<Self, CliError> {
        if options.schema.is_some() {
            return Err(CliError::NotForStore {
                option: "--schema",
                store: "Redis",
            });
        }
        let bad = |reason: String| CliError::BadUrl {
            url: redact(url),
            reason,
        };
        let timeout = Some(options.connect_timeout);
        let pool = PoolConfig {
            max_size: 1,
            timeouts: Timeouts {
                wait: timeout,
                create: timeout,
                recycle: timeout,
            },
            ..PoolConfig::default()
        };
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let repository = if let [single] = urls.as_slice() {
            let mut config = deadpool_redis::Config::from_url(*single);
            config.pool = Some(pool);
            let pool = config
                .create_pool(Some(Runtime::Tokio1))
                .map_err(|error| bad(error.to_string()))?;
            RedisRepository::new(pool)
        } else {
            let mut config = deadpool_redis::cluster::Config::from_urls(
                urls.iter()
                    .map(|url| (*url).to_owned())
                    .collect::<Vec<String>>(),
            );
            config.pool = Some(pool);
            let pool = config
                .create_pool(Some(Runtime::Tokio1))
                .map_err(|error| bad(error.to_string()))?;
            RedisRepository::cluster(pool)
        };
        let repository = match &options.prefix {
            Some(prefix) => repository.with_prefix(prefix.as_str()),
            None => repository,
        };
        Ok(Self::Redis {
            repository,
            url: redact(url),
        })
    }

    /// Connects once, so that an unreachable store is reported with the driver's reason
    /// (connection refused, authentication failed): a Postgres pool only says it timed out.
    /// Redis reports the reason by itself.
    pub(crate) async fn probe(&self) -> Result<(), CliError> {
        let Self::Postgres {
            connect, timeout, ..
        } = self
        else {
            return Ok(());
        };
        match tokio::time::timeout(*timeout, PgConnection::connect_with(connect)).await {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                Ok(())
            }
            Ok(Err(error)) => Err(self.error(RepositoryError::Unavailable(Box::new(error)))),
            Err(elapsed) => Err(self.error(RepositoryError::Unavailable(Box::new(elapsed)))),
        }
    }

    fn error(&self, source: RepositoryError) -> CliError {
        let (store, url) = match self {
            Self::Postgres { url, .. } => ("Postgres", url),
            Self::Redis { url, .. } => ("Redis", url),
            Self::Sqlite { url, .. } => ("SQLite", url),
            Self::MySql { url, .. } => ("MySQL", url),
        };
        CliError::Store {
            store,
            url: url.clone(),
            source,
        }
    }

    pub(crate) async fn get(
        &self,
        target: &str,
        key: &str,
    ) -> Result<Option<TrackedOperation>, CliError> {
        on_store!(self, repository => repository.get(target, key))
    }

    pub(crate) async fn forget(
        &self,
        id: RecordId<'_>,
        force: bool,
    ) -> Result<Forgotten, CliError> {
        on_store!(self, repository => repository.forget(id, force))
    }

    pub(crate) async fn stats(&self) -> Result<Stats, CliError> {
        on_store!(self, repository => repository.stats())
    }

    pub(crate) async fn cleanup(&self, limit: u32) -> Result<Cleaned, CliError> {
        on_store!(self, repository => repository.cleanup(limit))
    }
}
