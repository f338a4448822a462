#!/usr/bin/env bash
# The slow tests, on every store: servers restarted under held guards (private PostgreSQL and
# Redis instances on free ports), Redis failovers and resharding (Sentinel, Cluster),
# torture (processes killed and frozen, a referee outside the store), and longer runs of the
# generated operation sequences and fault schedules.
# `.ci/run` runs it after scripts/test-all.sh. Lengths, for a longer hunt:
#   DB_LOCKS_TORTURE_SECS (default 20)     seconds of torture per store
#   DB_LOCKS_PROPTEST_CASES (default 60)   generated sequences per store
#   DB_LOCKS_FAULT_CASES (default 15)      generated fault schedules per store
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
command -v redis-server >/dev/null || { echo "test-slow: redis-server is missing" >&2; exit 1; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  || { echo "test-slow: PostgreSQL's initdb is missing (scripts/services.sh installs it)" >&2; exit 1; }

export DB_LOCKS_TORTURE_SECS=${DB_LOCKS_TORTURE_SECS:-20}
export DB_LOCKS_PROPTEST_CASES=${DB_LOCKS_PROPTEST_CASES:-60}
export DB_LOCKS_FAULT_CASES=${DB_LOCKS_FAULT_CASES:-15}

# Restarts and torture: every store's test at once (they wait on leases, not on the CPU).
cargo test --all-features --test restarts --test torture -- \
  --ignored --skip torture_worker_entry --test-threads=5 --nocapture
# Redis deployments: a Sentinel failover, a cluster failover and a resharding under renewing
# guards, each on a private group (scripts/redis_topologies.sh on free ports).
cargo test --all-features --test redis_deployments -- --ignored --test-threads=3 --nocapture
# The generated sequences and fault schedules, longer than in the fast run.
RUST_TEST_THREADS=8 cargo test --all-features --test properties --test faults -- --nocapture
