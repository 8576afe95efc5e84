//! The payments service of example 04, as a library: the binary `example-04-payments` runs
//! it (see its `--help`), and the tests and benchmarks build it from here.
//!
//! - [`config`]: the command line;
//! - [`model`]: the payment and its validation;
//! - [`store`]: the payments table on SQLite, Postgres or MySQL, writing in ana's transaction;
//! - [`problem`]: errors as `application/problem+json`;
//! - [`routes`]: the handlers and their OpenAPI description;
//! - [`app`]: the service assembled, ana's layer and the ecosystem's around the routes.

pub mod app;
pub mod config;
pub mod model;
pub mod problem;
pub mod routes;
pub mod store;
