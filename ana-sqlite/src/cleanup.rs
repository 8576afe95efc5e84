//! The background clean-up task: [`SqliteRepository::spawn_cleanup`], ana-core's shared task over the
//! store's two clean-up statements.

use ana_core::{CleanupConfig, CleanupHandle, CleanupSteps, RepositoryError};

use crate::repository::SqliteRepository;

impl CleanupSteps for SqliteRepository {
    async fn fail_timed_out(&self, limit: u32) -> Result<u64, RepositoryError> {
        SqliteRepository::fail_timed_out(self, limit).await
    }

    async fn delete_expired(&self, limit: u32) -> Result<u64, RepositoryError> {
        SqliteRepository::delete_expired(self, limit).await
    }
}

impl SqliteRepository {
    /// Starts a Tokio task that runs [`fail_timed_out`](Self::fail_timed_out) and
    /// [`delete_expired`](Self::delete_expired) every `config.interval`, in batches of
    /// `config.batch_size`, until the handle is shut down or dropped. Store errors are counted
    /// in the [`CleanupReport`](ana_core::CleanupReport) and the next round tries again.
    ///
    /// Several processes may run it at once on one file: each statement is one write, and
    /// SQLite runs one write at a time.
    ///
    /// Must be called inside a Tokio runtime.
    pub fn spawn_cleanup(&self, config: CleanupConfig) -> CleanupHandle {
        ana_core::spawn_cleanup(self.clone(), config)
    }
}
