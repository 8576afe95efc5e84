//! `ana`: look at and release ana idempotency records, count them and clean up, in Postgres or
//! Redis. See the README for the commands and their output.

mod error;
mod output;
mod store;

use std::process::ExitCode;
use std::time::Duration;

use ana_core::{Forgotten, RecordId};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::error::CliError;
use crate::output::Format;
use crate::store::{Store, StoreOptions};

/// Exit status of a `forget` refused because the record is held.
const EXIT_HELD: u8 = 3;
/// Exit status of `inspect` or `forget` when there is no such record.
const EXIT_NOT_FOUND: u8 = 4;

const AFTER_HELP: &str = "\
The store is the one URL given: --database-url (postgres://) or --redis-url (redis://, or \
several comma-separated for a Redis Cluster). Without either option, DATABASE_URL or REDIS_URL \
is read from the environment; when both are set, say which with an option.

Keys are the stored keys. A record made by the HTTP layer (ana-axum, ana-actix) is stored under \
`<32 hex digits>:<client key>`, the hex being a hash of the caller's credentials: copy it from \
the store, or pass the client's key with --http-key for a request sent without an \
Authorization header.

Exit status: 0 done; 1 the store failed or could not be reached, or a bad URL; 2 bad usage; \
3 forget refused (the record is held: --force); 4 no such record.";

/// Inspect, forget, count and clean up ana idempotency records.
#[derive(Debug, Parser)]
#[command(name = "ana", version, after_help = AFTER_HELP)]
struct Cli {
    // The help is an attribute: rustdoc would read its brackets as links.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        help = "The Postgres store: postgres://user[:password]@host[:port]/database"
    )]
    database_url: Option<String>,

    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        global = true,
        help = "The Redis store: redis://[user:password@]host[:port][/db]; comma-separated URLs \
                for a Redis Cluster"
    )]
    redis_url: Option<String>,

    /// The Postgres schema holding the records.
    #[arg(long, global = true, value_name = "NAME")]
    schema: Option<String>,

    /// The Redis key prefix of the records.
    #[arg(long, global = true, value_name = "PREFIX")]
    prefix: Option<String>,

    /// How long to wait for a connection to the store (e.g. 5s, 500ms).
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    /// Print JSON (one object) instead of a table.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show one record.
    Inspect(RecordArgs),
    /// Delete one record, so that its key runs again as a first call. A record whose holder may
    /// still be at work (Running, timeout ahead or none) is refused unless --force.
    Forget {
        #[command(flatten)]
        record: RecordArgs,
        /// Delete it even while its holder may still be at work: the next call then runs
        /// beside that holder.
        #[arg(long)]
        force: bool,
    },
    /// Mark Running records past their timeout Failed, and delete expired records (Redis
    /// deletes those itself, by their TTL).
    Cleanup {
        /// The most records of each kind changed by this run.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Count the records by status.
    Stats,
}

/// Which record: a target and a stored key, or a client's key for the HTTP layer.
#[derive(Debug, Args)]
struct RecordArgs {
    /// The record's target: the operation, or for HTTP records `[METHOD]/path`.
    target: String,
    /// The stored key. HTTP records store `<scope hash>:<client key>`.
    #[arg(required_unless_present = "http_key", conflicts_with = "http_key")]
    key: Option<String>,
    /// A client's idempotency key, sent without an Authorization header: the stored key is
    /// derived from it as the HTTP layer does.
    #[arg(long, value_name = "CLIENT_KEY")]
    http_key: Option<String>,
}

impl RecordArgs {
    fn stored_key(&self) -> String {
        match (&self.key, &self.http_key) {
            (Some(key), _) => key.clone(),
            (None, Some(client_key)) => ana_http::scoped_key(None, client_key),
            // clap requires one of the two.
            (None, None) => String::new(),
        }
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let format = if cli.json {
        Format::Json
    } else {
        Format::Table
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&CliError::Runtime(error)),
    };
    match runtime.block_on(run(&cli, &matches, format)) {
        Ok(code) => code,
        Err(error) => fail(&error),
    }
}

/// Prints `error` as one line on stderr.
fn fail(error: &CliError) -> ExitCode {
    eprintln!("ana: {}", error::one_line(error));
    ExitCode::FAILURE
}

async fn run(cli: &Cli, matches: &ArgMatches, format: Format) -> Result<ExitCode, CliError> {
    let url = pick_url(cli, matches)?;
    let options = StoreOptions {
        schema: cli.schema.clone(),
        prefix: cli.prefix.clone(),
        connect_timeout: cli.connect_timeout,
    };
    let store = Store::open(url, &options)?;
    store.probe().await?;
    match &cli.command {
        Command::Inspect(record) => {
            let key = record.stored_key();
            match store.get(&record.target, &key).await? {
                Some(found) => {
                    print!("{}", output::record(&found, format));
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    print!("{}", output::not_found(&record.target, &key, format));
                    Ok(ExitCode::from(EXIT_NOT_FOUND))
                }
            }
        }
        Command::Forget { record, force } => {
            let key = record.stored_key();
            let forgotten = store
                .forget(RecordId::new(&record.target, &key), *force)
                .await?;
            print!(
                "{}",
                output::forgotten(&record.target, &key, forgotten, format)
            );
            Ok(match forgotten {
                Forgotten::Held { .. } => ExitCode::from(EXIT_HELD),
                Forgotten::NotFound => ExitCode::from(EXIT_NOT_FOUND),
                _ => ExitCode::SUCCESS,
            })
        }
        Command::Cleanup { limit } => {
            let cleaned = store.cleanup(*limit).await?;
            print!("{}", output::cleaned(&cleaned, *limit, format));
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats => {
            let stats = store.stats().await?;
            print!("{}", output::stats(&stats, format));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The one store URL: an option given on the command line wins over the environment; two
/// given the same way are refused.
fn pick_url<'a>(cli: &'a Cli, matches: &ArgMatches) -> Result<&'a str, CliError> {
    let from_command_line = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    let database = cli.database_url.as_deref().filter(|url| !url.is_empty());
    let redis = cli.redis_url.as_deref().filter(|url| !url.is_empty());
    match (database, redis) {
        (Some(database), Some(redis)) => {
            match (
                from_command_line("database_url"),
                from_command_line("redis_url"),
            ) {
                (true, false) => Ok(database),
                (false, true) => Ok(redis),
                (true, true) => Err(CliError::TwoStores {
                    from: "--database-url and --redis-url",
                }),
                (false, false) => Err(CliError::TwoStores {
                    from: "DATABASE_URL and REDIS_URL",
                }),
            }
        }
        (Some(url), None) | (None, Some(url)) => Ok(url),
        (None, None) => Err(CliError::NoStore),
    }
}
