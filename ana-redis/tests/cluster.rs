//! The ana-core store conformance suite on a Redis Cluster (`REDIS_CLUSTER_URLS`, the
//! comma-separated URLs of its masters), each case under its own random key prefix.
//!
//! Built with the `cluster-tests` feature only, and failing without `REDIS_CLUSTER_URLS`:
//! `make test-redis-cluster` (scripts/redis-cluster.sh) starts a 3-master cluster, runs this
//! file and stops the cluster.

mod common;

mod redis_cluster {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ana_core::conformance::Harness;
    use ana_core::{Manager, operation};
    use ana_redis::RedisSession;

    use super::common::RedisHarness;

    async fn harness() -> RedisHarness {
        RedisHarness::cluster().await
    }

    ana_core::conformance_tests!(harness());
    ana_core::maintenance_tests!(harness());

    /// Records spread over the masters (no hash tag pins them to one slot), and every one of
    /// them is claimed, finished and replayed through its own node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_spread_over_the_masters() {
        let harness = harness().await;
        assert!(harness.nodes().len() >= 3, "a 3-master cluster");
        let manager: Manager<String, String, RedisSession> =
            Manager::new(harness.repository()).with_clock(harness.clock());
        let runs = Arc::new(AtomicUsize::new(0));
        for round in 0..2 {
            for n in 0..48 {
                let runs = Arc::clone(&runs);
                let op = operation(
                    "[POST]/spread",
                    format!("key-{n}"),
                    format!("body-{n}"),
                    move |_ctx: RedisSession| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(format!("result-{n}"))
                    },
                );
                let outcome = manager.run(op).await.expect("a call on the cluster");
                assert_eq!(outcome.is_replayed(), round == 1);
                assert_eq!(outcome.into_inner(), format!("result-{n}"));
            }
        }
        assert_eq!(runs.load(Ordering::SeqCst), 48);
        let mut holding = 0;
        let mut total = 0;
        for node in harness.nodes() {
            let keys = harness.keys_on(node).await.len();
            total += keys;
            holding += usize::from(keys > 0);
        }
        assert_eq!(total, 48);
        assert_eq!(holding, harness.nodes().len(), "every master holds records");
    }
}
