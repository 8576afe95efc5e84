//! How much memory the memory store takes for a million finished records.

use anyhow::{Context, Result, bail};

use ana_core::{
    Claim, ClaimRequest, Fingerprint, IdempotencyRepository, MemoryRepository, RecordId,
};

/// Resident set size of this process, in bytes.
fn resident_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .context("parsing /proc/self/statm")?;
    Ok(pages * 4096)
}

/// Fills a memory store with `records` Finished records whose result is `result`, the way the
/// manager does (claim, then complete), and returns the growth of the resident set in bytes.
pub(crate) async fn measure(records: usize, result: &[u8]) -> Result<u64> {
    let repository = MemoryRepository::new().with_capacity(records);
    let before = resident_bytes()?;
    let fingerprint = Fingerprint::of(b"POST /bench {\"amount\":100}");
    let now = chrono::Utc::now();
    let mut key = String::with_capacity(36);
    for index in 0..records {
        key.clear();
        // UUID-shaped keys, as clients send them.
        use std::fmt::Write;
        let _ = write!(key, "{:08x}-7d2c-4f1e-9a3b-{:012x}", index, index * 7919);
        let request = ClaimRequest {
            target: "[POST]/bench",
            key: &key,
            fingerprint,
            reference_time: now,
            timeout: Some(std::time::Duration::from_secs(30)),
            expiration: Some(now + chrono::TimeDelta::hours(24)),
        };
        let Claim::Acquired { lease, session, .. } = repository.claim(&request).await? else {
            bail!("key {key} was not new");
        };
        let id = RecordId::new("[POST]/bench", &key);
        repository
            .complete(session, id, lease, Some(result))
            .await?;
    }
    let after = resident_bytes()?;
    if repository.len() != records {
        bail!(
            "the store holds {} records, not {records}",
            repository.len()
        );
    }
    Ok(after.saturating_sub(before))
}
