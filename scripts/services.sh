#!/usr/bin/env bash
# Starts the local services the full test run talks to, each only if it is not already
# listening, installing it first (Debian packages, PyPI) if it is missing:
#   PostgreSQL 127.0.0.1:5432 (database `test`, trust auth for local TCP)
#   MariaDB    127.0.0.1:3306 (root with an empty password, database `test`)
#   Redis      127.0.0.1:6379, and (with `redis`, after the rest) the TLS, Sentinel and Cluster
#              deployments of scripts/redis_topologies.sh (6380-6381, 6391-6392 and
#              26391-26393, 7001-7006; state in /tmp/db-locks-redis)
#   moto       127.0.0.1:8000 (a DynamoDB-compatible server from PyPI, run through
#              scripts/moto_serialized.py so conditional writes are atomic, as on DynamoDB)
# Usage: scripts/services.sh [postgres] [mysql] [redis] [dynamodb]   (default: all)
# Meant for throwaway test machines: it opens trust auth for 127.0.0.1 on a PostgreSQL it installs.
set -euo pipefail

services=("$@")
[ ${#services[@]} -eq 0 ] && services=(postgres mysql redis dynamodb)
state_dir=${DB_LOCKS_SERVICES_DIR:-/tmp/db-locks-services}
mkdir -p "$state_dir"

log() { echo "services: $*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 90); do port_open "$1" && return 0; sleep 1; done
  log "$2 did not start listening on 127.0.0.1:$1"; return 1
}
apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_postgres() {
  port_open 5432 && { log "PostgreSQL already running"; return 0; }
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { log "installing PostgreSQL"; apt_install postgresql; }
  local version
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  [ -d "/etc/postgresql/$version/main" ] || pg_createcluster "$version" main >/dev/null
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  grep -q "db-locks test" "$hba" || sed -i "1i host all all 127.0.0.1/32 trust # db-locks test\nhost all all ::1/128 trust # db-locks test" "$hba"
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 PostgreSQL
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null
}

start_mysql() {
  port_open 3306 && { log "MariaDB already running"; return 0; }
  [ -x /usr/sbin/mariadbd ] || { log "installing MariaDB"; apt_install mariadb-server; }
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
  log "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_port 3306 MariaDB
  # Through the socket as the system root: allow root over TCP with an empty password.
  mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS test;
    ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;" 2>/dev/null || true
}

# redis-server (its binary lives in redis-tools, with redis-cli) and openssl, which
# scripts/redis_topologies.sh uses for the TLS certificates.
install_redis() {
  local need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v redis-cli >/dev/null || need+=(redis-tools)
  command -v openssl >/dev/null || need+=(openssl)
  [ ${#need[@]} -eq 0 ] || { log "installing ${need[*]}"; apt_install "${need[@]}"; }
}

start_redis() {
  install_redis
  port_open 6379 && { log "Redis already running"; return 0; }
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$state_dir" --logfile "$state_dir/redis.log"
  wait_port 6379 Redis
}

start_dynamodb() {
  port_open 8000 && { log "DynamoDB-compatible server already running on 8000"; return 0; }
  python3 -c 'import moto.moto_server.werkzeug_app' 2>/dev/null \
    || { log "installing moto"; python3 -m pip install -q 'moto[server,dynamodb]'; }
  log "starting moto (serialised) on 127.0.0.1:8000"
  nohup python3 "$(dirname "$0")/moto_serialized.py" 8000 >"$state_dir/moto.log" 2>&1 &
  wait_port 8000 moto
}

redis_topologies=
for service in "${services[@]}"; do
  case "$service" in
    postgres) start_postgres ;;
    mysql | mariadb) start_mysql ;;
    redis) start_redis; redis_topologies=1 ;;
    dynamodb | ddb) start_dynamodb ;;
    *) log "unknown service $service (expected postgres, mysql, redis, dynamodb)"; exit 2 ;;
  esac
done

# Starts what is missing of them, heals what a failover test left behind, waits until healthy.
[ -z "$redis_topologies" ] || "$(dirname "$0")/redis_topologies.sh" all
