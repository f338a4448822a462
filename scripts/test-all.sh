#!/usr/bin/env bash
# The full test run: every store. Installs the client libraries the postgres and mysql
# features link against if they are missing, starts the local services (scripts/services.sh),
# then runs the whole suite with every feature on. A store that cannot be reached fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
dpkg -s libpq-dev >/dev/null 2>&1 || need+=(libpq-dev)
dpkg -s libmariadb-dev-compat >/dev/null 2>&1 || need+=(libmariadb-dev-compat libmariadb-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "test-all: installing ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

scripts/services.sh
# Most tests wait on leases rather than the CPU: run more of them at once than there are cores.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-8}
cargo test --all-features "$@"
