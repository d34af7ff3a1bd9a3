#!/usr/bin/env bash
# Backing services of the distributed push server, on this machine:
#   - RabbitMQ (Debian's rabbitmq-server), AMQP on 127.0.0.1:5672, user guest/guest;
#   - a MongoDB-wire server (SecantusDB 0.7.0b3) on 127.0.0.1:${NS_MONGO_PORT:-27017};
# and the Web Push peers the tests drive: Debian's firefox-esr, pywebpush (PyPI) and the npm
# web-push library (with Debian's nodejs and npm when they are missing).
#
# Usage: scripts/services.sh start|stop|status
#   start   installs what is missing (the Web Push peers too), starts what is not running (reusing whatever already
#           answers on the ports) and waits until both accept connections.
#   stop    stops what `start` started: SecantusDB through its pid file, RabbitMQ with
#           `rabbitmqctl stop`. Anything it did not start is left running.
#   status  one line per service; exits 0 when both answer, 1 otherwise.
#
# Environment:
#   NS_MONGO_PORT        port of the MongoDB-wire server (default 27017)
#   NS_SERVICES_DIR      data, logs and pid files (default /tmp/ns-services)
#   NS_SERVICES_TIMEOUT  seconds to wait for each service to answer (default 120)
#   NS_NPM_PREFIX        where npm installs web-push (default /opt/ns-peers/npm)
#   RABBITMQ_NODENAME, RABBITMQ_NODE_PORT  RabbitMQ's own settings, honoured as usual
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

MONGO_PORT="${NS_MONGO_PORT:-27017}"
AMQP_PORT="${RABBITMQ_NODE_PORT:-5672}"
DIR="${NS_SERVICES_DIR:-/tmp/ns-services}"
TIMEOUT="${NS_SERVICES_TIMEOUT:-120}"
MONGO_PID="$DIR/secantusd-$MONGO_PORT.pid"
MONGO_LOG="$DIR/secantusd-$MONGO_PORT.log"
RABBIT_MARK="$DIR/rabbitmq-$AMQP_PORT.started"
NPM_PREFIX="${NS_NPM_PREFIX:-/opt/ns-peers/npm}"

say() { echo "services: $*"; }
die() { echo "services: error: $*" >&2; exit 1; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 2 bash -c ": >/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# True when the server on 127.0.0.1:$1 answers a MongoDB ping (a plain TCP connect
# when the pymongo driver is not installed).
mongo_ping() {
    python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
port = int(sys.argv[1])
try:
    import pymongo
except ImportError:
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    sys.exit(0)
client = pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=2000,
                             connectTimeoutMS=2000, directConnection=True)
client.admin.command("ping")
EOF
}

rabbit_up() { port_open "$AMQP_PORT"; }
mongo_up() { mongo_ping "$MONGO_PORT"; }

# Polls "$3..." until it succeeds or the deadline passes; $1 names the service, $2 is a hint.
wait_for() {
    local name=$1 hint=$2 deadline=$((SECONDS + TIMEOUT))
    shift 2
    until "$@"; do
        ((SECONDS < deadline)) || die "$name did not answer within ${TIMEOUT}s ($hint)"
        sleep 1
    done
    say "$name is ready"
}

# Pid recorded in our pid file, when that process is still a running secantusd.
our_mongo_pid() {
    local pid
    [[ -f $MONGO_PID ]] || return 1
    pid=$(<"$MONGO_PID")
    [[ $pid =~ ^[0-9]+$ ]] && grep -qa secantusd "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

start_rabbit() {
    if ! command -v rabbitmq-server >/dev/null; then
        say "installing rabbitmq-server (apt-get)"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
    fi
    if rabbit_up; then
        say "rabbitmq already answers on 127.0.0.1:$AMQP_PORT, reusing it"
    elif rabbitmqctl -q status >/dev/null 2>&1; then
        say "rabbitmq node is already running, waiting for it"
    else
        say "starting rabbitmq (rabbitmq-server -detached)"
        mkdir -p "$DIR"
        RABBITMQ_NODE_IP_ADDRESS="${RABBITMQ_NODE_IP_ADDRESS:-127.0.0.1}" rabbitmq-server -detached
        touch "$RABBIT_MARK"
    fi
    wait_for "rabbitmq on 127.0.0.1:$AMQP_PORT" "see /var/log/rabbitmq/" rabbit_up
}

start_mongo() {
    local pid hint="see $MONGO_LOG"
    if ! command -v secantusd-py >/dev/null; then
        say "installing SecantusDB==0.7.0b3 (pip)"
        PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q SecantusDB==0.7.0b3
        hash -r
        if command -v pyenv >/dev/null; then pyenv rehash; fi
        command -v secantusd-py >/dev/null || die "secantusd-py is not on PATH after installing SecantusDB"
    fi
    if pid=$(our_mongo_pid); then
        say "secantusd (pid $pid) is already running"
    elif port_open "$MONGO_PORT"; then
        say "something already listens on 127.0.0.1:$MONGO_PORT, reusing it"
        hint="is it a MongoDB server?"
    else
        say "starting secantusd on 127.0.0.1:$MONGO_PORT (data $DIR/mongo, log $MONGO_LOG)"
        mkdir -p "$DIR/mongo"
        setsid nohup secantusd-py --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$DIR/mongo" \
            >"$MONGO_LOG" 2>&1 </dev/null &
        echo $! >"$MONGO_PID"
    fi
    wait_for "mongodb-wire server on 127.0.0.1:$MONGO_PORT" "$hint" mongo_up
}

# The real Web Push peers of the tests: a browser and a sender library, unmodified.
install_peers() {
    if ! command -v firefox-esr >/dev/null; then
        say "installing firefox-esr (apt-get)"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q firefox-esr
    fi
    if ! python3 -c "import pywebpush" 2>/dev/null; then
        say "installing pywebpush (pip)"
        PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q pywebpush
    fi
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        say "installing nodejs and npm (apt-get)"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
    fi
    # The tests find it with NODE_PATH=$NS_NPM_PREFIX/node_modules.
    if [[ ! -f $NPM_PREFIX/node_modules/web-push/package.json ]]; then
        say "installing web-push into $NPM_PREFIX (npm)"
        npm install --silent --no-audit --no-fund --prefix "$NPM_PREFIX" web-push
    fi
}

stop_mongo() {
    local pid
    if ! pid=$(our_mongo_pid); then
        say "no secantusd started by this script on port $MONGO_PORT, nothing to stop"
        rm -f "$MONGO_PID"
        return
    fi
    say "stopping secantusd (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "secantusd (pid $pid) did not stop in 15s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$MONGO_PID"
}

stop_rabbit() {
    if [[ ! -f $RABBIT_MARK ]]; then
        say "no rabbitmq started by this script, nothing to stop"
        return
    fi
    say "stopping rabbitmq (rabbitmqctl stop)"
    rabbitmqctl -q stop || say "rabbitmqctl stop failed (was it already stopped?)"
    rm -f "$RABBIT_MARK"
}

status() {
    local ok=0
    if rabbit_up; then
        say "rabbitmq: up on 127.0.0.1:$AMQP_PORT"
    else
        say "rabbitmq: down (nothing on 127.0.0.1:$AMQP_PORT)"
        ok=1
    fi
    if mongo_up; then
        say "mongodb-wire server: up on 127.0.0.1:$MONGO_PORT$(pid=$(our_mongo_pid) && echo " (secantusd pid $pid)")"
    else
        say "mongodb-wire server: down (no answer on 127.0.0.1:$MONGO_PORT)"
        ok=1
    fi
    return $ok
}

case "${1:-}" in
    start) install_peers; start_rabbit; start_mongo ;;
    stop) stop_mongo; stop_rabbit ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
