#!/usr/bin/env bash
# Runs `db-locks bench --json` on every local store and writes one JSON file per store into
# OUTDIR, with environment.txt: the machine, the server versions, each exact command line and
# the load average before and after it. The stores are those scripts/services.sh starts.
#
# Usage: scripts/bench_all.sh OUTDIR [sqlite] [postgres] [mariadb] [redis] [ddb]   (default: all)
# The binary: $DB_LOCKS_BIN, else $CARGO_TARGET_DIR/release/db-locks, else target/release/db-locks
# (build it first: cargo build --release --all-features).
#
# BENCHMARKS.md's figures come from `scripts/bench_all.sh bench/results/before`; take the
# "after" figures with `scripts/bench_all.sh bench/results/after` on the same machine.
set -euo pipefail

[ $# -ge 1 ] || { sed -n '2,11p' "$0" >&2; exit 2; }
out=$1
shift
stores=("$@")
[ ${#stores[@]} -eq 0 ] && stores=(sqlite postgres mariadb redis ddb)
bin=${DB_LOCKS_BIN:-${CARGO_TARGET_DIR:-target}/release/db-locks}
[ -x "$bin" ] || { echo "bench_all: no binary at $bin (cargo build --release --all-features)" >&2; exit 2; }

mkdir -p "$out"
env_file=$out/environment.txt
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# The same options everywhere, except DynamoDB through moto (a serialised test server, tens
# of milliseconds per request): fewer samples, shorter boxes, and a hold longer than its
# acquire (a few ms would end before a waiter's first attempt came back).
common=(-t bench --json bench --threads 8 --threads-sweep 1,2,4,8 --handoff-waiters 1,8)
fast=(-n 200 --contended-secs 10 --handoff-hold 0.005)
slow=(-n 50 --contended-secs 5 --handoff-hold 0.05)

{
  echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit:  $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "cpus:    $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
  echo "memory:  $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "os:      $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
  echo "binary:  $bin"
  for s in "${stores[@]}"; do
    case $s in
      postgres) echo "postgres: $(psql -h 127.0.0.1 -U postgres -d test -tAc 'SELECT version()' 2>&1 | head -1)" ;;
      mariadb) echo "mariadb: $(mariadb -h 127.0.0.1 -uroot -N -e 'SELECT VERSION()' test 2>&1 | head -1)" ;;
      redis) echo "redis:   $(redis-cli -h 127.0.0.1 INFO server 2>&1 | grep -m1 redis_version | tr -d '\r')" ;;
      ddb) echo "ddb:     moto $(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '?') through scripts/moto_serialized.py" ;;
    esac
  done
  echo
} > "$env_file"

for s in "${stores[@]}"; do
  case $s in
    sqlite) cmd=("$bin" rdb --database-url "sqlite://$scratch/locks.sqlite" "${common[@]}" "${fast[@]}") ;;
    postgres) cmd=("$bin" rdb --database-url postgres://postgres@127.0.0.1:5432/test "${common[@]}" "${fast[@]}") ;;
    mariadb) cmd=("$bin" rdb --database-url mysql://root@127.0.0.1:3306/test "${common[@]}" "${fast[@]}") ;;
    redis) cmd=("$bin" redis --redis-url redis://127.0.0.1:6379 "${common[@]}" "${fast[@]}") ;;
    ddb) cmd=(env AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
              "$bin" ddb --dynamodb-endpoint http://127.0.0.1:8000 "${common[@]}" "${slow[@]}") ;;
    *) echo "bench_all: unknown store \`$s\` (sqlite, postgres, mariadb, redis, ddb)" >&2; exit 2 ;;
  esac
  echo "bench_all: $s" >&2
  {
    echo "== $s"
    echo "command: ${cmd[*]}"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "busiest processes before (%cpu since start, command):"
    ps -eo pcpu=,comm= --sort=-pcpu | head -4 | sed 's/^/    /'
  } >> "$env_file"
  started=$(date +%s)
  "${cmd[@]}" > "$out/$s.json"
  {
    echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "took:        $(( $(date +%s) - started )) s"
  } >> "$env_file"
done
echo "bench_all: wrote ${stores[*]/%/.json} and environment.txt into $out" >&2
