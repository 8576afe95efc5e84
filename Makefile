# ana — make targets. `make` alone lists them.

DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
REDIS_URL ?= redis://127.0.0.1:6379
MYSQL_URL ?= mysql://root@127.0.0.1:3306/test
NATS_URL ?= nats://127.0.0.1:4222
export DATABASE_URL REDIS_URL MYSQL_URL NATS_URL

CARGO ?= cargo
# cargo-nextest when installed (faster), cargo test otherwise.
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: help test lint fmt services bench bench-peers chaos test-redis-cluster example-02 example-03 example-04 fuzz-api example-05

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

services: ## Start the local PostgreSQL, MariaDB and Redis the tests use, if stopped
	@bash scripts/services.sh

test: services ## Run every test (unit, conformance, Postgres, SQLite, MySQL, Redis, HTTP, doc tests)
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --all-features --no-fail-fast -E 'not binary_id(ana-redis::cluster)'
else
	$(CARGO) test --workspace --all-features --no-fail-fast --lib --bins --tests -- --skip redis_cluster::
endif
	CARGO=$(CARGO) bash ana-redis/scripts/redis-cluster.sh
	$(CARGO) test --workspace --all-features --doc

bench: services ## Benchmarks (under 10 min): Manager::call (divan), HTTP and store ratios (wrk, pgbench, redis-benchmark), example 04's POST
	bash scripts/bench-tools.sh
	$(CARGO) bench -p ana-bench --bench core
	$(CARGO) bench -p ana-bench --bench core --features metrics -- layer_new_key
	$(CARGO) run --profile bench -q -p ana-bench
	$(CARGO) run --profile bench -q -p ana-bench -- nats
	$(CARGO) build --profile bench -q -p example-04-payments
	$(CARGO) run --profile bench -q -p ana-bench -- payments

# The peers' crate (bench/peers) is no workspace member: its own lockfile and target dir.
PEERS_TARGET_DIR ?= $(CURDIR)/target/peers

bench-peers: services ## ana side by side with `idempotent` and `axum-idempotent` (about 6 min): memory and Redis, new keys and replays
	bash scripts/bench-tools.sh
	CARGO_TARGET_DIR=$(PEERS_TARGET_DIR) $(CARGO) build --release --ignore-rust-version --manifest-path bench/peers/Cargo.toml
	$(CARGO) run --profile bench -q -p ana-bench -- peers $(PEERS_TARGET_DIR)/release/ana-bench-peers

chaos: services ## Fault suite (about a minute, loopback only): storms, store outages, SIGKILLs, takeovers, disconnects on example 02; memory, Postgres, Redis
	$(CARGO) build -q -p example-02-axum -p ana-chaos
	$(CARGO) run -q -p ana-chaos

test-redis-cluster: ## ana-redis conformance on a 3-master Redis Cluster it starts and stops (ports 7301-7303)
	CARGO=$(CARGO) bash ana-redis/scripts/redis-cluster.sh

lint: ## fmt check, clippy -D warnings, rustdoc -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --all-features --no-deps

fmt: ## Format the code
	$(CARGO) fmt --all

# The example sees DATABASE_URL / REDIS_URL only when the user set them (environment or
# command line), never the test defaults above.
user_set = $(filter environment% command,$(origin $(1)))
EXAMPLE_02_ENV = $(if $(call user_set,DATABASE_URL),,-u DATABASE_URL) $(if $(call user_set,REDIS_URL),,-u REDIS_URL)

example-02: ## Example 02 on :3000 (memory store; DATABASE_URL=postgres://…, sqlite://ana.db or mysql://…; REDIS_URL=…; SLOW_MS=5000 slow)
	env $(EXAMPLE_02_ENV) $(CARGO) run -p example-02-axum

example-03: ## Example 03 (actix-web) on :3000, the same demo as example 02 (same variables)
	env $(EXAMPLE_02_ENV) $(CARGO) run -p example-03-actix

example-04: ## Example 04, the payments API, on 127.0.0.1:8080 (SQLite file payments.db; ARGS="--repo postgres --repo-uri … --admin --limit 5-S")
	$(CARGO) run -p example-04-payments -- $(ARGS)

fuzz-api: ## schemathesis (PyPI, venv under target/) against example 04 for FUZZ_SECONDS (120)
	CARGO=$(CARGO) bash examples/04-payments/scripts/fuzz-api.sh

example-05: ## Example 05, FTGO's create-order saga over NATS JetStream on :3000 (needs DATABASE_URL=postgres://… and NATS_URL)
	$(CARGO) run -p example-05-orders
