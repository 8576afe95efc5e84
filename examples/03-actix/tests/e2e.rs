//! End to end over a real socket: the suite both demo examples share
//! (`examples/shared/e2e.rs`), run against this example's binary.

use ana_actix::ana_core::chrono;

/// The example binary the suite starts.
const BINARY: &str = env!("CARGO_BIN_EXE_example-03-actix");

/// The table the example's transactional route writes its orders to.
const ORDERS_TABLE: &str = "example_03_orders";

#[path = "../../shared/e2e.rs"]
mod e2e;
