//! The ana-core store conformance suite on a single Redis server (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`), each case under its own random key prefix.

mod common;

async fn harness() -> common::RedisHarness {
    common::RedisHarness::single().await
}

ana_core::conformance_tests!(harness());
