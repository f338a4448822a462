#!/usr/bin/env bash
# Starts the Redis deployments the TLS, Sentinel and Cluster tests talk to, all on loopback,
# each piece only if it is not already running, and waits until each is healthy. Idempotent:
# run it again after a test killed a server (or a failover moved the primary) and it restarts
# the dead processes and waits until the group is whole again. Installs redis-server,
# redis-tools (redis-cli) and openssl with apt if they are missing.
#
# Usage: scripts/redis_topologies.sh [all|tls|sentinel|cluster] [--dir DIR] [--base-port N]
#        scripts/redis_topologies.sh stop [--dir DIR]     (also: --stop)
#   DIR   state directory (default $DB_LOCKS_REDIS_DIR, else /tmp/db-locks-redis): pidfiles
#         DIR/<port>.pid, logs DIR/<port>.log, data DIR/<port>/, sentinel configs
#         DIR/sentinel-<port>.conf, certificates DIR/tls/.
#   stop  SIGKILLs every server started under DIR (by its pidfile) and removes the pidfiles;
#         the rest of DIR stays (the next start reuses certificates and configurations).
#   DB_LOCKS_REDIS_TIMEOUT  seconds to wait for each deployment to become healthy (30).
#
# Ports               default      with --base-port B
#   tls, no client auth  6380         B+0     TLS only (plain port 0), --tls-auth-clients no
#   tls, client cert     6381         B+1     TLS only, --tls-auth-clients yes
#   sentinel primary     6391         B+10    (after a failover the primary may be B+11/6392:
#   sentinel replica     6392         B+11     ask a sentinel, master name `db-locks-primary`)
#   sentinels            26391-26393  B+20..B+22  (quorum 2)
#   cluster nodes        7001-7006    B+30..B+35  (3 primaries, 3 replicas)
#   cluster bus          17001-17006  B+40..B+45  (--cluster-port; not node port + 10000, so
#                                     that a block B..B+45 below 32768 stays out of the
#                                     kernel's ephemeral port range, where outgoing
#                                     connections would take ports from under the bus)
# Certificates (DIR/tls/, generated once, valid 10 years): ca.crt ca.key, server.crt
# server.key (SAN IP:127.0.0.1, DNS:localhost), client.crt client.key (signed by ca.crt).
#
# Every server: bind 127.0.0.1, no persistence (--save '' --appendonly no), DEBUG allowed
# from loopback (--enable-debug-command local, so tests can `DEBUG SLEEP`), replicas synced
# at once (--repl-diskless-sync-delay 0; the default waits 5 s for more replicas).
# Prints nothing on stdout; short log lines go to stderr. Exit status 1, naming what did
# not become healthy and showing the tail of its log, if something fails.
set -euo pipefail

log() { echo "redis-topologies: $*" >&2; }
usage() { sed -n '8,9p' "$0" | sed 's/^# \{0,1\}//' >&2; }

kind=all
dir=${DB_LOCKS_REDIS_DIR:-/tmp/db-locks-redis}
base=
while [ $# -gt 0 ]; do
  case "$1" in
    all | tls | sentinel | cluster | stop) kind=$1 ;;
    --stop) kind=stop ;;
    --dir) [ $# -ge 2 ] || { usage; exit 2; }; dir=$2; shift ;;
    --dir=*) dir=${1#--dir=} ;;
    --base-port) [ $# -ge 2 ] || { usage; exit 2; }; base=$2; shift ;;
    --base-port=*) base=${1#--base-port=} ;;
    -h | --help) usage; exit 0 ;;
    *) log "unknown argument: $1"; usage; exit 2 ;;
  esac
  shift
done
timeout_s=${DB_LOCKS_REDIS_TIMEOUT:-30}

if [ -n "$base" ]; then
  if ! [[ "$base" =~ ^[0-9]+$ ]] || [ "$base" -lt 1024 ] || [ $((base + 45)) -gt 65535 ]; then
    log "--base-port must be a number from 1024 to 65490 (got $base)"; exit 2
  fi
  tls_ports=("$base" $((base + 1)))
  sentinel_data=($((base + 10)) $((base + 11)))
  sentinel_ports=($((base + 20)) $((base + 21)) $((base + 22)))
  cluster_ports=($((base + 30)) $((base + 31)) $((base + 32)) $((base + 33)) $((base + 34)) $((base + 35)))
  cluster_bus_offset=10
else
  tls_ports=(6380 6381)
  sentinel_data=(6391 6392)
  sentinel_ports=(26391 26392 26393)
  cluster_ports=(7001 7002 7003 7004 7005 7006)
  cluster_bus_offset=10000
fi
master_name=db-locks-primary

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
tls_dir=$dir/tls

# One run at a time per DIR. The lock's descriptor is closed for every server started
# (9>&-), or the daemons would keep holding it.
exec 9>"$dir/.lock"
flock -w 300 9 || { log "another run of $0 holds $dir/.lock"; exit 1; }

# ---------------------------------------------------------------------------------------
# Processes

# The pid of the live server of DIR on `port` (from DIR/<port>.pid); fails if there is none.
pid_of() {
  local file="$dir/$1.pid" pid state
  [ -s "$file" ] || return 1
  pid=$(cat "$file" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/stat" ] || return 1
  grep -q '^redis' "/proc/$pid/comm" 2>/dev/null || return 1
  # A killed daemon whose parent (PID 1 in a container) does not reap it stays a zombie.
  state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ "$state" != Z ] && [ "$state" != X ] || return 1
  echo "$pid"
}
alive() { pid_of "$1" >/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts a daemonized redis-server for `port` unless one of DIR already runs there.
# Arguments after the port go to redis-server (a config file first, for a sentinel).
start_server() {
  local port=$1; shift
  alive "$port" && return 0
  if port_open "$port"; then
    log "port $port is in use, but not by a server of $dir (no live $dir/$port.pid)"
    exit 1
  fi
  mkdir -p "$dir/$port"
  rm -f "$dir/$port.pid"
  local logfile="$dir/$port.log" logged=0
  [ -f "$logfile" ] && logged=$(stat -c %s "$logfile")
  redis-server "$@" --bind 127.0.0.1 --daemonize yes --pidfile "$dir/$port.pid" \
    --logfile "$logfile" --dir "$dir/$port" \
    </dev/null >>"$logfile" 2>&1 9>&- \
    || fail "redis-server on $port did not start" "$logfile"
  # The daemon writes its pidfile once it listens; it logs why and exits if it cannot.
  local deadline=$((SECONDS + 10))
  until alive "$port" && port_open "$port"; do
    if tail -c +$((logged + 1)) "$logfile" 2>/dev/null \
      | grep -qE 'aborting|exiting|Fatal|FATAL|Failed listening|Failed to configure TLS|Could not create'; then
      fail "redis-server on $port exited at start" "$logfile"
    fi
    [ $SECONDS -lt $deadline ] || fail "redis-server on $port did not start listening within 10s" "$logfile"
    sleep 0.05
  done
}

# Common arguments of a data node (not a sentinel), into the array `args`.
data_args() {
  args=(--port "$1" --save "" --appendonly no --enable-debug-command local
    --repl-diskless-sync-delay 0)
}

# SIGKILLs the servers of DIR on the given ports and waits until they are gone.
kill_ports() {
  local port pid pids=()
  for port in "$@"; do
    if pid=$(pid_of "$port"); then kill -KILL "$pid" 2>/dev/null || true; pids+=("$port"); fi
  done
  for _ in $(seq 1 100); do
    local left=0
    for port in "${pids[@]}"; do alive "$port" && left=1; done
    [ $left -eq 0 ] && break
    sleep 0.05
  done
  for port in "$@"; do rm -f "$dir/$port.pid"; done
}

fail() {
  local what=$1; shift
  log "$what"
  local file
  for file in "$@"; do
    [ -s "$file" ] || continue
    log "--- last lines of $file:"
    tail -n 15 "$file" >&2
  done
  exit 1
}

# Waits up to `secs` seconds until `check` (a function printing why not, on failure)
# succeeds; on timeout, leaves the reason in $why and fails.
why=
wait_for() {
  local secs=$1 check=$2
  local deadline=$((SECONDS + secs))
  while :; do
    why=$("$check" 2>&1) && return 0
    [ -z "${DB_LOCKS_REDIS_TRACE:-}" ] || log "${SECONDS}s: $why"
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

# Waits until `check` succeeds, or fails naming `what` with the tail of the given logs
# (of those whose port the reason names, if it names any).
wait_healthy() {
  local what=$1 check=$2; shift 2
  wait_for "$timeout_s" "$check" && return 0
  local file named=()
  for file in "$@"; do
    [[ " $why " =~ [^0-9]$(basename "$file" .log)[^0-9] ]] && named+=("$file")
  done
  [ ${#named[@]} -gt 0 ] || named=("$@")
  fail "$what did not become healthy within ${timeout_s}s: $why" "${named[@]}"
}

# redis-cli, its output and errors on stdout, an unresponsive server said so after 3 s.
cli() {
  local port=$1 out rc=0; shift
  out=$(timeout 3 redis-cli "${tls_flags[@]}" -p "$port" "$@" 2>&1) || rc=$?
  [ $rc -ne 124 ] || out="(no answer from $port within 3s)"
  printf '%s\n' "$out" | tr -d '\r'
  return $rc
}
tls_flags=()
# `INFO section` field value.
info_field() { cli "$1" INFO "$2" | sed -n "s/^$3://p"; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
ensure_tools() {
  local need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v redis-cli >/dev/null || need+=(redis-tools)
  command -v openssl >/dev/null || need+=(openssl)
  if [ ${#need[@]} -gt 0 ]; then log "installing ${need[*]}"; apt_install "${need[@]}"; fi
}

# ---------------------------------------------------------------------------------------
# TLS

# Generates the certificates if any is missing, and then sets certs_made.
certs_made=
make_certs() {
  local f missing=
  for f in ca.crt ca.key server.crt server.key client.crt client.key; do
    [ -s "$tls_dir/$f" ] || missing=1
  done
  [ -n "$missing" ] || return 0
  certs_made=1
  log "generating TLS certificates in $tls_dir"
  mkdir -p "$tls_dir"
  local tmp
  tmp=$(mktemp -d "$dir/tls-new.XXXXXX")
  (
    set -e
    cd "$tmp"
    cat >req.cnf <<'EOF'
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
    cat >server.ext <<'EOF'
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    cat >client.ext <<'EOF'
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }
    key ca.key
    openssl req -x509 -new -key ca.key -config req.cnf -extensions v3_ca \
      -subj "/CN=db-locks test CA" -days 3650 -sha256 -out ca.crt
    for who in server client; do
      key "$who.key"
      local cn="localhost"; [ "$who" = client ] && cn="db-locks test client"
      openssl req -new -key "$who.key" -config req.cnf -subj "/CN=$cn" -out "$who.csr"
      openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -CAserial ca.srl -days 3650 -sha256 -extfile "$who.ext" -out "$who.crt" 2>/dev/null
    done
    chmod 600 ca.key server.key client.key
    mv ca.crt ca.key server.crt server.key client.crt client.key "$tls_dir/"
  ) >"$dir/tls-gen.log" 2>&1 || { rm -rf "$tmp"; fail "openssl failed to generate the certificates" "$dir/tls-gen.log"; }
  rm -rf "$tmp"
}

tls_cli() {
  local tls_flags=(--tls --cacert "$tls_dir/ca.crt" --cert "$tls_dir/client.crt" --key "$tls_dir/client.key")
  cli "$@"
}

check_tls() {
  local port out
  for port in "${tls_ports[@]}"; do
    alive "$port" || { echo "no server on $port"; return 1; }
    out=$(tls_cli "$port" PING)
    [ "$out" = PONG ] || { echo "PING over TLS on $port: $out"; return 1; }
  done
}

start_tls() {
  make_certs
  # Servers still running with certificates that are gone: restart them with the new ones.
  [ -z "$certs_made" ] || kill_ports "${tls_ports[@]}"
  local i auth
  for i in 0 1; do
    auth=no; [ $i -eq 1 ] && auth=yes
    alive "${tls_ports[$i]}" && continue
    log "starting TLS Redis on ${tls_ports[$i]} (client certificates: $auth)"
    data_args 0
    start_server "${tls_ports[$i]}" "${args[@]}" --tls-port "${tls_ports[$i]}" \
      --tls-cert-file "$tls_dir/server.crt" --tls-key-file "$tls_dir/server.key" \
      --tls-ca-cert-file "$tls_dir/ca.crt" --tls-auth-clients "$auth"
  done
  wait_healthy "TLS Redis (${tls_ports[*]})" check_tls \
    "$dir/${tls_ports[0]}.log" "$dir/${tls_ports[1]}.log"
}

# ---------------------------------------------------------------------------------------
# Sentinel

sentinel_conf() { echo "$dir/sentinel-$1.conf"; }

write_sentinel_conf() {
  local port=$1 primary=$2
  cat >"$(sentinel_conf "$port")" <<EOF
# Written by scripts/redis_topologies.sh; Sentinel rewrites it as the group changes.
port $port
sentinel resolve-hostnames no
sentinel monitor $master_name 127.0.0.1 $primary 2
sentinel down-after-milliseconds $master_name 1000
sentinel failover-timeout $master_name 5000
sentinel parallel-syncs $master_name 1
EOF
}

# The primary's port the sentinels agree on (the most common answer of the live ones), else
# the one their configuration files name, else the initial primary.
current_primary() {
  local port answers=()
  for port in "${sentinel_ports[@]}"; do
    alive "$port" || continue
    local a
    a=$(cli "$port" SENTINEL get-master-addr-by-name "$master_name" | sed -n 2p)
    [[ "$a" =~ ^[0-9]+$ ]] && answers+=("$a")
  done
  if [ ${#answers[@]} -eq 0 ]; then
    for port in "${sentinel_ports[@]}"; do
      local conf
      conf=$(sentinel_conf "$port")
      [ -s "$conf" ] || continue
      local a
      a=$(awk -v m="$master_name" '$1 == "sentinel" && $2 == "monitor" && $3 == m { print $5 }' "$conf")
      [[ "$a" =~ ^[0-9]+$ ]] && answers+=("$a")
    done
  fi
  if [ ${#answers[@]} -eq 0 ]; then echo "${sentinel_data[0]}"; return; fi
  printf '%s\n' "${answers[@]}" | sort | uniq -c | sort -rn | awk 'NR == 1 { print $2 }'
}

other_data_node() { if [ "$1" = "${sentinel_data[0]}" ]; then echo "${sentinel_data[1]}"; else echo "${sentinel_data[0]}"; fi; }

# "key=value" lines of a flat key/value reply (SENTINEL master, SENTINEL replicas with one).
kv() { awk 'NR % 2 == 1 { k = $0; next } { print k "=" $0 }'; }

check_sentinel() {
  local port primary= replica a
  for port in "${sentinel_data[@]}" "${sentinel_ports[@]}"; do
    alive "$port" || { echo "no server on $port"; return 1; }
  done
  for port in "${sentinel_ports[@]}"; do
    a=$(cli "$port" SENTINEL get-master-addr-by-name "$master_name") || { echo "sentinel $port: $a"; return 1; }
    a=$(sed -n 2p <<<"$a")
    [[ "$a" =~ ^[0-9]+$ ]] || { echo "sentinel $port does not know $master_name: $a"; return 1; }
    [ -z "$primary" ] || [ "$a" = "$primary" ] \
      || { echo "the sentinels disagree on the primary ($primary, $a)"; return 1; }
    primary=$a
    local m
    m=$(cli "$port" SENTINEL master "$master_name") || { echo "sentinel $port: $m"; return 1; }
    m=$(kv <<<"$m")
    grep -qx 'flags=master' <<<"$m" || { echo "sentinel $port: primary $(grep '^flags=' <<<"$m")"; return 1; }
    grep -qx 'num-slaves=1' <<<"$m" || { echo "sentinel $port: $(grep '^num-slaves=' <<<"$m")"; return 1; }
    grep -qx 'num-other-sentinels=2' <<<"$m" \
      || { echo "sentinel $port: $(grep '^num-other-sentinels=' <<<"$m")"; return 1; }
    local r
    r=$(cli "$port" SENTINEL replicas "$master_name") || { echo "sentinel $port: $r"; return 1; }
    r=$(kv <<<"$r")
    # (Not its master-link-status: a sentinel refreshes that from the replica only every
    # 10 s; the replica's own INFO below says whether the link is up.)
    grep -qx 'flags=slave' <<<"$r" || { echo "sentinel $port: replica $(grep '^flags=' <<<"$r")"; return 1; }
  done
  case " ${sentinel_data[*]} " in *" $primary "*) ;; *) echo "the sentinels name $primary as the primary"; return 1 ;; esac
  replica=$(other_data_node "$primary")
  local info
  info=$(cli "$replica" INFO replication) || { echo "replica $replica: $info"; return 1; }
  if grep -qx 'role:master' <<<"$info"; then
    # A primary the sentinels failed over from while it was unresponsive (DEBUG SLEEP) and
    # that still acts as one. The sentinels agree on the new primary and none is failing
    # over (flags=master above): do now what they would do in a few seconds.
    cli "$replica" REPLICAOF 127.0.0.1 "$primary" >/dev/null
    echo "$replica still acted as a primary: made it a replica of $primary"; return 1
  fi
  grep -qx "master_port:$primary" <<<"$info" || { echo "replica $replica: $(grep '^master_port:' <<<"$info")"; return 1; }
  grep -qx 'master_link_status:up' <<<"$info" \
    || { echo "replica $replica: $(grep '^master_link_status:' <<<"$info")"; return 1; }
  info=$(cli "$primary" INFO replication) || { echo "primary $primary: $info"; return 1; }
  grep -qx 'role:master' <<<"$info" || { echo "primary $primary: $(grep '^role:' <<<"$info")"; return 1; }
  grep -qx 'connected_slaves:1' <<<"$info" || { echo "primary $primary: $(grep '^connected_slaves:' <<<"$info")"; return 1; }
  grep -q "^slave0:.*port=$replica,state=online" <<<"$info" \
    || { echo "primary $primary: replica $replica not online: $(grep '^slave0:' <<<"$info")"; return 1; }
}

start_data_node() { # port [primary port to replicate]
  local port=$1 of=${2:-}
  data_args "$port"
  if [ -n "$of" ]; then
    log "starting Redis $port (replica of $of)"
    start_server "$port" "${args[@]}" --replicaof 127.0.0.1 "$of"
  else
    log "starting Redis $port (primary)"
    start_server "$port" "${args[@]}"
  fi
}

start_sentinel() {
  local port=$1 primary=$2 conf
  conf=$(sentinel_conf "$port")
  [ -s "$conf" ] || write_sentinel_conf "$port" "$primary"
  alive "$port" && return 0
  log "starting sentinel $port"
  start_server "$port" "$conf" --sentinel
}

start_sentinel_group() {
  local port conf stale=
  # Configuration files from a run with other ports: start over.
  for port in "${sentinel_ports[@]}"; do
    conf=$(sentinel_conf "$port")
    [ -s "$conf" ] || continue
    local monitored
    monitored=$(awk -v m="$master_name" '$1 == "sentinel" && $2 == "monitor" && $3 == m { print $5 }' "$conf")
    case " ${sentinel_data[*]} " in *" $monitored "*) ;; *) stale=1 ;; esac
    grep -qx "port $port" "$conf" || stale=1
  done
  if [ -n "$stale" ]; then
    log "sentinel configurations in $dir do not match these ports: starting the group over"
    kill_ports "${sentinel_ports[@]}" "${sentinel_data[@]}"
    for port in "${sentinel_ports[@]}"; do rm -f "$(sentinel_conf "$port")"; done
  fi

  local primary replica
  primary=$(current_primary)
  # Sentinels first: a failover needs them.
  for port in "${sentinel_ports[@]}"; do start_sentinel "$port" "$primary"; done
  primary=$(current_primary)
  replica=$(other_data_node "$primary")

  if alive "$primary"; then
    alive "$replica" || start_data_node "$replica" "$primary"
  elif alive "$replica"; then
    # The primary is down and its replica is up: let the sentinels promote the replica,
    # then bring the old primary back as its replica.
    log "primary $primary is down: waiting for the sentinels to promote $replica"
    local deadline=$((SECONDS + 20))
    while [ $SECONDS -lt $deadline ] && [ "$(current_primary)" != "$replica" ]; do sleep 0.5; done
    if [ "$(current_primary)" = "$replica" ]; then
      start_data_node "$primary" "$replica"
    else
      log "no failover to $replica: restarting $primary as the primary"
      start_data_node "$primary"
    fi
  else
    start_data_node "$primary"
    start_data_node "$replica" "$primary"
  fi

  local logs=()
  for port in "${sentinel_data[@]}" "${sentinel_ports[@]}"; do logs+=("$dir/$port.log"); done
  # If the sentinels still miscount replicas or each other after a while (a configuration
  # file lost while the others ran), SENTINEL RESET makes them rediscover the group.
  if ! wait_for $((timeout_s / 2)) check_sentinel; then
    log "Sentinel group not healthy after $((timeout_s / 2))s ($why): SENTINEL RESET"
    for port in "${sentinel_ports[@]}"; do cli "$port" SENTINEL RESET "$master_name" >/dev/null || true; done
  fi
  wait_healthy "Sentinel group (${sentinel_data[*]}, sentinels ${sentinel_ports[*]})" check_sentinel "${logs[@]}"
}

# ---------------------------------------------------------------------------------------
# Cluster

nodes_conf() { echo "$dir/$1/nodes.conf"; }

# Ports named by a nodes.conf (one per node line).
nodes_conf_ports() {
  awk '$1 != "vars" && NF >= 8 { split($2, a, "@"); n = split(a[1], b, ":"); print b[n] }' "$1"
}

# fresh: no node has met another; formed: every nodes.conf lists the six nodes, each its own
# port as myself; anything else (or nodes.conf from a run with other ports) is broken.
cluster_files_state() {
  local port f n fresh=0 formed=0 p
  for port in "${cluster_ports[@]}"; do
    f=$(nodes_conf "$port")
    if [ ! -s "$f" ]; then fresh=$((fresh + 1)); continue; fi
    for p in $(nodes_conf_ports "$f"); do
      case " ${cluster_ports[*]} " in *" $p "*) ;; *) echo broken; return ;; esac
    done
    local me
    me=$(awk '$1 != "vars" && $3 ~ /myself/ { split($2, a, "@"); n = split(a[1], b, ":"); print b[n] }' "$f")
    [ "$me" = "$port" ] || { echo broken; return; }
    n=$(nodes_conf_ports "$f" | wc -l)
    if [ "$n" -le 1 ]; then fresh=$((fresh + 1)); elif [ "$n" -eq 6 ]; then formed=$((formed + 1)); fi
  done
  if [ $fresh -eq 6 ]; then echo fresh; elif [ $formed -eq 6 ]; then echo formed; else echo broken; fi
}

check_cluster() {
  local port info nodes
  for port in "${cluster_ports[@]}"; do
    alive "$port" || { echo "no server on $port"; return 1; }
  done
  for port in "${cluster_ports[@]}"; do
    info=$(cli "$port" CLUSTER INFO) || { echo "node $port: $info"; return 1; }
    grep -qx 'cluster_state:ok' <<<"$info" || { echo "node $port: $(grep '^cluster_state:' <<<"$info" || echo "$info")"; return 1; }
    grep -qx 'cluster_slots_assigned:16384' <<<"$info" || { echo "node $port: $(grep '^cluster_slots_assigned:' <<<"$info")"; return 1; }
    grep -qx 'cluster_slots_ok:16384' <<<"$info" || { echo "node $port: $(grep '^cluster_slots_ok:' <<<"$info")"; return 1; }
    grep -qx 'cluster_known_nodes:6' <<<"$info" || { echo "node $port: $(grep '^cluster_known_nodes:' <<<"$info")"; return 1; }
    nodes=$(cli "$port" CLUSTER NODES) || { echo "node $port: $nodes"; return 1; }
    local bad
    bad=$(awk '$3 ~ /fail|handshake|noaddr/ || $8 != "connected" { print $2, $3, $8 }' <<<"$nodes")
    [ -z "$bad" ] || { echo "node $port sees: $bad"; return 1; }
    local masters replicas
    masters=$(awk '$3 ~ /master/ && NF >= 9' <<<"$nodes" | wc -l)
    replicas=$(awk '$3 ~ /slave/' <<<"$nodes" | wc -l)
    [ "$masters" -eq 3 ] && [ "$replicas" -eq 3 ] \
      || { echo "node $port sees $masters primaries with slots and $replicas replicas"; return 1; }
    if grep -qx 'role:slave' <<<"$(cli "$port" INFO replication)"; then
      [ "$(info_field "$port" replication master_link_status)" = up ] \
        || { echo "replica $port: link to its primary is not up"; return 1; }
    fi
  done
}

start_cluster_nodes() {
  local port
  for port in "${cluster_ports[@]}"; do
    alive "$port" && continue
    log "starting cluster node $port"
    data_args "$port"
    start_server "$port" "${args[@]}" --cluster-enabled yes \
      --cluster-port $((port + cluster_bus_offset)) \
      --cluster-config-file "$(nodes_conf "$port")" --cluster-node-timeout 2000
  done
}

wipe_cluster() {
  kill_ports "${cluster_ports[@]}"
  local port
  for port in "${cluster_ports[@]}"; do rm -rf "${dir:?}/$port"; done
}

create_cluster() {
  start_cluster_nodes
  local port addrs=()
  for port in "${cluster_ports[@]}"; do
    for _ in $(seq 1 100); do [ "$(cli "$port" PING)" = PONG ] && break; sleep 0.1; done
    addrs+=("127.0.0.1:$port")
  done
  log "creating the cluster ${cluster_ports[*]}"
  timeout "$timeout_s" redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
    </dev/null >"$dir/cluster-create.log" 2>&1 \
    || fail "redis-cli --cluster create failed" "$dir/cluster-create.log" "$dir/${cluster_ports[0]}.log"
}

start_cluster() {
  local logs=() port
  for port in "${cluster_ports[@]}"; do logs+=("$dir/$port.log"); done
  case "$(cluster_files_state)" in
    fresh) create_cluster ;;
    formed)
      start_cluster_nodes
      if ! wait_for $((timeout_s / 2)) check_cluster; then
        log "Redis Cluster did not heal within $((timeout_s / 2))s ($why): creating it again"
        wipe_cluster
        create_cluster
      fi
      ;;
    *)
      log "cluster state in $dir is unusable (nodes.conf missing, partial or from other ports): creating it again"
      wipe_cluster
      create_cluster
      ;;
  esac
  wait_healthy "Redis Cluster (${cluster_ports[*]})" check_cluster "${logs[@]}" "$dir/cluster-create.log"
}

# ---------------------------------------------------------------------------------------

stop_all() {
  local f ports=()
  for f in "$dir"/*.pid; do
    [ -e "$f" ] || continue
    ports+=("$(basename "$f" .pid)")
  done
  [ ${#ports[@]} -eq 0 ] || kill_ports "${ports[@]}"
}

case "$kind" in
  stop) stop_all; exit 0 ;;
esac

ensure_tools
case "$kind" in
  tls) start_tls ;;
  sentinel) start_sentinel_group ;;
  cluster) start_cluster ;;
  all) start_tls; start_sentinel_group; start_cluster ;;
esac
