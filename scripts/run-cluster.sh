#!/usr/bin/env bash
# Runs the whole distributed push server on this machine, in the foreground:
# RabbitMQ and the MongoDB-wire server (scripts/services.sh), ns-msg-monitor, ns-as,
# ns-ua-ws front ends (two by default) and ns-ua-udp, all sharing one secret.
#
# Usage: scripts/run-cluster.sh      (Ctrl-C or SIGTERM stops everything it started)
#   NS_SECRET            shared secret (default: a random one for this run)
#   NS_CLUSTER_LOG_DIR   where each binary logs (default ./cluster-logs)
#   NS_WS_INSTANCES      how many ns-ua-ws (default 2), on ports 8080, 9080, 10080, ...
#   NS_MONGO_URL, NS_MONGO_DB, NS_AMQP_URL, NS_AMQP_PREFIX, NS_NOTIFY_BASE_URL, NS_LOG_JSON,
#   RUST_LOG             passed on to every binary (see each binary's --help)
# If one binary exits, the script says which one and stops the others.
set -euo pipefail
cd "$(dirname "$0")/.."

LOG_DIR="${NS_CLUSTER_LOG_DIR:-./cluster-logs}"
BIN="${CARGO_TARGET_DIR:-target}/release"
declare -A NAMES=() # pid -> name of every binary started
services_started=false

say() { echo "cluster: $*"; }

stop_all() {
    local pid deadline=$((SECONDS + 30))
    trap "" INT TERM
    if ((${#NAMES[@]})); then
        say "stopping ${NAMES[*]}"
        for pid in "${!NAMES[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        for pid in "${!NAMES[@]}"; do
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
            if kill -0 "$pid" 2>/dev/null; then
                say "${NAMES[$pid]} (pid $pid) still running after 30s, killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done
    fi
    if $services_started; then
        scripts/services.sh stop
    fi
    say "stopped"
}
trap stop_all EXIT
trap 'say "interrupted"; exit 0' INT
trap 'say "terminated"; exit 0' TERM

# Services: stopped on exit only if this script is the one that started them.
if ! scripts/services.sh status >/dev/null 2>&1; then services_started=true; fi
scripts/services.sh start

say "building release binaries"
cargo build --release -p ns-as -p ns-msg-monitor -p ns-ua-ws -p ns-ua-udp

if [[ -z ${NS_SECRET:-} ]]; then
    NS_SECRET=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    say "generated a random shared secret for this run (set NS_SECRET to choose one)"
fi
export NS_SECRET

mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd)

# start NAME BINARY ARGS...: runs a binary in the background, logging to $LOG_DIR/NAME.log.
start() {
    local name=$1 bin=$2
    shift 2
    "$BIN/$bin" "$@" >"$LOG_DIR/$name.log" 2>&1 &
    NAMES[$!]=$name
    say "started $name (pid $!): $bin $*"
}
start monitor ns-msg-monitor --listen 0.0.0.0:8083
start as ns-as --listen 0.0.0.0:8081
WS_URLS=""
for ((i = 1; i <= ${NS_WS_INSTANCES:-2}; i++)); do
    port=$((7080 + 1000 * i))
    start "ws$i" ns-ua-ws --listen "0.0.0.0:$port" --server-id "ws$i"
    WS_URLS+="  ws://localhost:$port/"
done
start udp ns-ua-udp --listen 0.0.0.0:8082

cat <<EOF
cluster: logs in $LOG_DIR/
cluster: endpoints
  WebSocket (subprotocol push-notification)$WS_URLS
  get a token                                GET  http://localhost:8080/token
  notify an application                      POST http://localhost:8081/notify/{appToken}
  pull notifications (UDP wake-up clients)   http://localhost:8082/pull
  health and metrics                         /health and /metrics on 8081, 8082, 8083 and every WebSocket port
cluster: running; Ctrl-C to stop
EOF

# Any binary exiting ends the run (the EXIT trap stops the others).
status=0
wait -n -p dead "${!NAMES[@]}" || status=$?
say "${NAMES[$dead]} (pid $dead) exited with status $status, see $LOG_DIR/${NAMES[$dead]}.log"
unset "NAMES[$dead]"
exit 1
