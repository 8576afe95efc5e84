//! Clocks: the system clock, and a manual clock that tests move by hand.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};

/// A source of the current time.
///
/// The [`Manager`](crate::Manager) uses it for the expiry check made before storage is touched,
/// and the [`MemoryRepository`](crate::MemoryRepository) for every deadline it stores. Stores
/// backed by a server (Postgres, Redis) compare stored deadlines on the server's clock instead.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => at_unix(since),
            Err(_) => Utc::now(),
        }
    }
}

/// The time `since` after the Unix epoch. The calendar date of the day is kept per thread:
/// turning a day number into a date is most of what `Utc::now` costs, and it changes once a
/// day (a clock is read several times per call).
fn at_unix(since: Duration) -> DateTime<Utc> {
    thread_local! {
        static DAY: Cell<Option<(u64, NaiveDate)>> = const { Cell::new(None) };
    }
    const DAY_SECONDS: u64 = 86_400;
    let seconds = since.as_secs();
    let day = seconds / DAY_SECONDS;
    let date = DAY.with(|cached| match cached.get() {
        Some((cached_day, date)) if cached_day == day => Some(date),
        _ => {
            let date =
                DateTime::from_timestamp(i64::try_from(day * DAY_SECONDS).ok()?, 0)?.date_naive();
            cached.set(Some((day, date)));
            Some(date)
        }
    });
    // Below 86,400 seconds: fits.
    let second = (seconds % DAY_SECONDS) as u32;
    match (
        date,
        NaiveTime::from_num_seconds_from_midnight_opt(second, since.subsec_nanos()),
    ) {
        (Some(date), Some(time)) => NaiveDateTime::new(date, time).and_utc(),
        _ => Utc::now(),
    }
}

/// A clock that only moves when told to; clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use ana_core::{Clock, ManualClock};
///
/// let clock = ManualClock::default();
/// let start = clock.now();
/// clock.advance(Duration::from_secs(90));
/// assert_eq!((clock.now() - start).num_seconds(), 90);
/// ```
#[derive(Clone)]
pub struct ManualClock {
    micros: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self {
            micros: Arc::new(AtomicI64::new(at.timestamp_micros())),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.micros.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        self.micros.store(at.timestamp_micros(), Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    /// A clock stopped at the current system time.
    fn default() -> Self {
        Self::new(Utc::now())
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.micros.load(Ordering::SeqCst)).unwrap_or_default()
    }
}

/// `at + by`, saturating at the largest representable time.
pub(crate) fn add(at: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(by)
        .ok()
        .and_then(|delta| at.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `later - earlier` as a std duration, zero when `later` is not after `earlier`.
pub(crate) fn until(earlier: DateTime<Utc>, later: DateTime<Utc>) -> Duration {
    (later - earlier).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_day_gives_the_same_instants_as_chrono() {
        // Across midnights, forwards and backwards (a wall clock can be set back), with the
        // day cached by the previous call each time.
        let midnight: u64 = 1_764_460_800; // 2025-11-30T00:00:00Z
        let instants = [
            (midnight - 1, 999_999_999),
            (midnight, 0),
            (midnight + 1, 500),
            (midnight + 86_399, 123_456_789),
            (midnight + 86_400, 1),
            (midnight - 86_400 * 400, 42),
            (midnight + 3_600, 7),
            (0, 0),
            (253_402_300_799, 999_999_999), // 9999-12-31T23:59:59Z
        ];
        for (seconds, nanos) in instants {
            let expected =
                DateTime::from_timestamp(i64::try_from(seconds).unwrap_or(i64::MAX), nanos);
            assert_eq!(
                Some(at_unix(Duration::new(seconds, nanos))),
                expected,
                "{seconds}.{nanos:09}"
            );
        }
    }

    #[test]
    fn the_system_clock_reads_the_wall_clock() {
        let before = Utc::now();
        let now = SystemClock.now();
        let after = Utc::now();
        assert!(before <= now && now <= after, "{before} {now} {after}");
    }
}
