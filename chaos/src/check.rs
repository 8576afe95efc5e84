//! The invariants, checked key by key, and the table they print.

use std::collections::BTreeMap;

use crate::server::{Answer, Ledger};
use crate::store::Store;

pub(crate) const ONE_EFFECT: &str = "at most one committed effect per key";
pub(crate) const BACKED: &str = "every 2xx has its effect";
pub(crate) const PROBLEMS: &str = "every other answer is a problem with the right status";
pub(crate) const ONCE_MORE: &str = "a retry after an outage runs at most once more";
pub(crate) const SETTLED: &str = "every key ends answered 2xx";
pub(crate) const FLOOR: &str = "a timeout below the minimum never runs the handler";

const ROWS: [&str; 6] = [ONE_EFFECT, BACKED, PROBLEMS, ONCE_MORE, SETTLED, FLOOR];

/// How one key went: every answer it got, and how many of its requests were cut (a server
/// SIGKILLed under it, a client that hung up), whose runs may be repeated by a retry.
#[derive(Debug, Default)]
pub(crate) struct KeyLog {
    pub(crate) key: String,
    pub(crate) answers: Vec<Answer>,
    pub(crate) cut: usize,
}

impl KeyLog {
    pub(crate) fn new(key: String) -> Self {
        Self {
            key,
            ..Self::default()
        }
    }

    /// Requests whose attempt an outage or a cut may have left unrecorded: a 503, or cut.
    fn disrupted(&self) -> usize {
        self.cut
            + self
                .answers
                .iter()
                .filter(|a| a.status() == Some(503))
                .count()
    }
}

#[derive(Debug, Default)]
struct Tally {
    checked: usize,
    violations: Vec<String>,
}

/// Every check made, by invariant and store.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    table: BTreeMap<(&'static str, &'static str), Tally>,
    notes: Vec<String>,
}

impl Checks {
    pub(crate) fn check(
        &mut self,
        store: &'static str,
        invariant: &'static str,
        ok: bool,
        detail: impl FnOnce() -> String,
    ) {
        let tally = self.table.entry((invariant, store)).or_default();
        tally.checked += 1;
        if !ok {
            let detail = detail();
            println!("   VIOLATION [{store}] {invariant}: {detail}");
            tally.violations.push(detail);
        }
    }

    pub(crate) fn fail(&mut self, store: &'static str, invariant: &'static str, detail: &str) {
        self.check(store, invariant, false, || detail.to_owned());
    }

    pub(crate) fn note(&mut self, line: String) {
        println!("   {line}");
        self.notes.push(line);
    }

    /// Checks one key's answers: those that are not 2xx must be problems of `allowed`
    /// (status, type), and the runs and committed effects must match the 2xx answers.
    pub(crate) async fn judge(
        &mut self,
        store: &Store,
        ledger: &Ledger,
        log: &KeyLog,
        allowed: &[(u16, &str)],
    ) {
        let name = store.name();
        let key = &log.key;
        for answer in &log.answers {
            let fine = match answer {
                Answer::Response { status, .. } if (200..300).contains(status) => true,
                Answer::Response {
                    status, problem, ..
                } => allowed
                    .iter()
                    .any(|(s, kind)| s == status && problem.as_deref() == Some(*kind)),
                Answer::None(_) => false,
            };
            self.check(name, PROBLEMS, fine, || match answer {
                Answer::None(reason) => format!("{key}: no answer ({reason})"),
                Answer::Response { .. } => format!("{key}: {answer:?}"),
            });
        }
        let runs = ledger.runs(key);
        let disrupted = log.disrupted();
        let success = log.answers.iter().any(Answer::is_success);
        self.check(name, ONCE_MORE, runs <= 1 + disrupted, || {
            format!("{key}: {runs} runs for {disrupted} disrupted requests")
        });
        let orders = match store.orders(key).await {
            Ok(orders) => orders,
            Err(error) => return self.fail(name, BACKED, &error),
        };
        let one = match orders {
            Some(rows) => rows <= 1,
            None => disrupted > 0 || runs <= 1,
        };
        self.check(name, ONE_EFFECT, one, || {
            format!("{key}: {runs} runs, {orders:?} committed rows")
        });
        if success {
            let backed = runs >= 1 && orders.is_none_or(|rows| rows == 1);
            self.check(name, BACKED, backed, || {
                format!("{key}: answered 2xx with {runs} runs, {orders:?} committed rows")
            });
        }
    }

    /// Prints the table; answers the number of violations.
    pub(crate) fn print(&self, stores: &[&'static str]) -> usize {
        let width = ROWS.iter().map(|row| row.len()).max().unwrap_or(0);
        println!();
        print!("{:width$}", "invariant");
        for store in stores {
            print!("  {store:>16}");
        }
        println!();
        let mut violations = 0;
        for row in ROWS {
            print!("{row:width$}");
            for store in stores {
                let cell = match self.table.get(&(row, *store)) {
                    None => "-".to_owned(),
                    Some(tally) if tally.violations.is_empty() => format!("ok ({})", tally.checked),
                    Some(tally) => {
                        violations += tally.violations.len();
                        format!("FAILED {}/{}", tally.violations.len(), tally.checked)
                    }
                };
                print!("  {cell:>16}");
            }
            println!();
        }
        println!();
        for note in &self.notes {
            println!("{note}");
        }
        println!("{violations} violations");
        violations
    }
}
