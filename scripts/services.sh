#!/usr/bin/env bash
# Starts the servers that flumen's connector tests and examples talk to, on
# loopback, installing them first when missing; prints one line per server:
# its name, the address its clients use, and `started` or `running` (it
# was up already). Idempotent: a server already running is
# left as it is. Data and logs live outside the clone, under
# $FLUMEN_SERVICES (default /var/lib/flumen/services for root, whose home
# the servers' own users cannot enter, else ~/.cache/flumen/services).
#
#   scripts/services.sh [postgres] [kafka] [nats] [s3] [redis] [mqtt]      start (all when none is named)
#   scripts/services.sh stop [postgres] [kafka] [nats] [s3] [redis] [mqtt] stop
#
# PostgreSQL: Debian's package, a cluster of its own on 127.0.0.1:54329
# (FLUMEN_POSTGRES_PORT), user `flumen` with trust authentication, database
# `flumen`: postgres://flumen@127.0.0.1:54329/flumen
#
# Kafka: tansu, a Kafka-compatible broker from crates.io, built once with
# `cargo install --locked` into $FLUMEN_TOOLS (default /var/lib/flumen/tools
# for root, else ~/.cache/flumen/tools; the first build takes about half an
# hour on 2 cores), with its in-memory storage (topics are gone when it
# stops), listening on 127.0.0.1:19092 (FLUMEN_KAFKA_PORT).
#
# NATS: Debian's nats-server with JetStream on, its store under $ROOT/nats,
# listening on 127.0.0.1:14222 (FLUMEN_NATS_PORT): nats://127.0.0.1:14222
#
# S3: s3s-fs, an S3-compatible server over a directory, from crates.io,
# built once like tansu (a few minutes), on 127.0.0.1:19000
# (FLUMEN_S3_PORT) with access key `flumen` and secret key
# `flumen-test-secret` (region us-east-1), data under $ROOT/s3; it has one
# bucket, `flumen`: http://127.0.0.1:19000
#
# Redis: Debian's redis-server, in memory only (no snapshots), on
# 127.0.0.1:16379 (FLUMEN_REDIS_PORT) with password `flumen-test-secret`:
# redis://:flumen-test-secret@127.0.0.1:16379
#
# MQTT: Debian's mosquitto, without persistence, on 127.0.0.1:11883
# (FLUMEN_MQTT_PORT) for user `flumen` with password `flumen-test-secret`;
# no limit on unacknowledged QoS 1 messages per client (a source
# acknowledges only after checkpoints): tcp://127.0.0.1:11883
set -euo pipefail
if [ "$(id -u)" -eq 0 ]; then
    ROOT="${FLUMEN_SERVICES:-/var/lib/flumen/services}"
else
    ROOT="${FLUMEN_SERVICES:-$HOME/.cache/flumen/services}"
fi
PG_PORT="${FLUMEN_POSTGRES_PORT:-54329}"
KAFKA_PORT="${FLUMEN_KAFKA_PORT:-19092}"
NATS_PORT="${FLUMEN_NATS_PORT:-14222}"
S3_PORT="${FLUMEN_S3_PORT:-19000}"
REDIS_PORT="${FLUMEN_REDIS_PORT:-16379}"
MQTT_PORT="${FLUMEN_MQTT_PORT:-11883}"
TANSU_VERSION=0.6.0
# The newest s3s-fs that builds with this machine's Rust (1.95).
S3S_VERSION=0.14.1
if [ "$(id -u)" -eq 0 ]; then
    TOOLS="${FLUMEN_TOOLS:-/var/lib/flumen/tools}"
else
    TOOLS="${FLUMEN_TOOLS:-$HOME/.cache/flumen/tools}"
fi
mkdir -p "$ROOT"

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "services.sh: '$*' is missing; installing it needs root (apt-get)" >&2
        exit 1
    fi
    if [ ! -f "$ROOT/.apt-updated" ]; then
        apt-get update -qq >&2
        touch "$ROOT/.apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

pg_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -z "$dir" ] || [ ! -x "$dir/postgres" ]; then
        return 1
    fi
    echo "$dir"
}

# Runs a PostgreSQL program as the cluster's owner (postgres refuses root).
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_postgres() {
    local bin data log
    if ! bin="$(pg_bin)"; then
        apt_install postgresql
        bin="$(pg_bin)"
    fi
    data="$ROOT/postgres/data"
    log="$ROOT/postgres/server.log"
    if [ ! -f "$data/PG_VERSION" ]; then
        mkdir -p "$ROOT/postgres"
        rm -rf "$data"
        if [ "$(id -u)" -eq 0 ]; then
            chown postgres "$ROOT/postgres"
        fi
        as_owner "$bin/initdb" -D "$data" -U flumen --auth=trust -E UTF8 >/dev/null
        cat >> "$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
fsync = off
max_connections = 200
CONF
    fi
    # Running means accepting connections: a server killed with its
    # processes still exiting, or a stale pid file, is stopped and started.
    local tries=0 how=running
    until "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; do
        tries=$((tries + 1))
        how=started
        if [ "$tries" -gt 5 ]; then
            echo "services.sh: PostgreSQL did not start; see $log" >&2
            exit 1
        fi
        if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
            as_owner "$bin/pg_ctl" -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
        fi
        as_owner "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null 2>&1 || sleep 1
    done
    if ! as_owner "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U flumen -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'flumen'" | grep -q 1; then
        as_owner "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U flumen -d postgres -qc "CREATE DATABASE flumen"
    fi
    echo "postgres postgres://flumen@127.0.0.1:$PG_PORT/flumen $how"
}

stop_postgres() {
    local bin
    bin="$(pg_bin)" || return 0
    if [ -f "$ROOT/postgres/data/PG_VERSION" ]; then
        as_owner "$bin/pg_ctl" -D "$ROOT/postgres/data" -m fast stop >/dev/null 2>&1 || true
    fi
}

listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Stops server $1, started with its pid in $ROOT/$1/pid, if it runs, and
# waits (up to 5 s) until it is gone, so a start right after finds its
# port free.
stop_pid() {
    if [ -f "$ROOT/$1/pid" ]; then
        local pid tries=0
        pid="$(cat "$ROOT/$1/pid")"
        kill "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 50 ]; do
            sleep 0.1
            tries=$((tries + 1))
        done
        rm -f "$ROOT/$1/pid"
    fi
}

# Waits for server $1 (started with its pid in $ROOT/$1/pid) to listen on
# port $2, for at most $3 tenths of a second; exits naming $4 and its log
# $5 when it does not, or when it died.
await_server() {
    local tries=0
    until listening "$2"; do
        tries=$((tries + 1))
        if [ "$tries" -gt "$3" ] || ! kill -0 "$(cat "$ROOT/$1/pid")" 2>/dev/null; then
            echo "services.sh: $4 did not start; see $5" >&2
            exit 1
        fi
        sleep 0.1
    done
}

start_kafka() {
    local tansu="$TOOLS/bin/tansu" log="$ROOT/kafka/server.log"
    if [ ! -x "$tansu" ] || ! "$tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION" \
        || [ ! -f "$TOOLS/tansu-features" ] || [ "$(cat "$TOOLS/tansu-features")" != dynostore ]; then
        echo "services.sh: building tansu $TANSU_VERSION into $TOOLS (once; see $TOOLS/tansu-install.log)" >&2
        mkdir -p "$TOOLS"
        CARGO_TARGET_DIR="$TOOLS/target" cargo install --locked tansu --version "$TANSU_VERSION" \
            --features dynostore --root "$TOOLS" > "$TOOLS/tansu-install.log" 2>&1 || {
            echo "services.sh: building tansu failed; see $TOOLS/tansu-install.log" >&2
            exit 1
        }
        echo dynostore > "$TOOLS/tansu-features"
    fi
    local how=running
    if ! listening "$KAFKA_PORT"; then
        how=started
        mkdir -p "$ROOT/kafka"
        nohup "$tansu" broker --storage-engine memory://tansu/ \
            --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
            > "$log" 2>&1 < /dev/null &
        echo $! > "$ROOT/kafka/pid"
        await_server kafka "$KAFKA_PORT" 300 tansu "$log"
    fi
    echo "kafka 127.0.0.1:$KAFKA_PORT $how"
}

stop_kafka() {
    stop_pid kafka
}

start_nats() {
    local log="$ROOT/nats/server.log"
    if ! command -v nats-server >/dev/null; then
        apt_install nats-server
    fi
    local how=running
    if ! listening "$NATS_PORT"; then
        how=started
        mkdir -p "$ROOT/nats"
        nohup nats-server --jetstream --store_dir "$ROOT/nats/store" \
            --addr 127.0.0.1 --port "$NATS_PORT" \
            > "$log" 2>&1 < /dev/null &
        echo $! > "$ROOT/nats/pid"
        await_server nats "$NATS_PORT" 100 nats-server "$log"
    fi
    echo "nats nats://127.0.0.1:$NATS_PORT $how"
}

stop_nats() {
    stop_pid nats
}

start_s3() {
    local server="$TOOLS/bin/s3s-fs" log="$ROOT/s3/server.log"
    if [ ! -x "$server" ] || [ "$(cat "$TOOLS/s3s-version" 2>/dev/null)" != "$S3S_VERSION" ]; then
        echo "services.sh: building s3s-fs $S3S_VERSION into $TOOLS (once; see $TOOLS/s3s-install.log)" >&2
        mkdir -p "$TOOLS"
        CARGO_TARGET_DIR="$TOOLS/target" cargo install --locked s3s-fs --version "$S3S_VERSION" \
            --features binary --root "$TOOLS" > "$TOOLS/s3s-install.log" 2>&1 || {
            echo "services.sh: building s3s-fs failed; see $TOOLS/s3s-install.log" >&2
            exit 1
        }
        echo "$S3S_VERSION" > "$TOOLS/s3s-version"
    fi
    local how=running
    if ! listening "$S3_PORT"; then
        how=started
        # Test data only: each start begins empty, with the one bucket.
        rm -rf "$ROOT/s3/data"
        mkdir -p "$ROOT/s3/data/flumen"
        nohup "$server" --host 127.0.0.1 --port "$S3_PORT" \
            --access-key flumen --secret-key flumen-test-secret "$ROOT/s3/data" \
            > "$log" 2>&1 < /dev/null &
        echo $! > "$ROOT/s3/pid"
        await_server s3 "$S3_PORT" 100 s3s-fs "$log"
    fi
    echo "s3 http://127.0.0.1:$S3_PORT $how"
}

stop_s3() {
    stop_pid s3
}

start_redis() {
    local log="$ROOT/redis/server.log"
    if ! command -v redis-server >/dev/null; then
        apt_install redis-server
    fi
    local how=running
    if ! listening "$REDIS_PORT"; then
        how=started
        mkdir -p "$ROOT/redis"
        nohup redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
            --requirepass flumen-test-secret --dir "$ROOT/redis" \
            > "$log" 2>&1 < /dev/null &
        echo $! > "$ROOT/redis/pid"
        await_server redis "$REDIS_PORT" 100 redis-server "$log"
    fi
    echo "redis redis://:flumen-test-secret@127.0.0.1:$REDIS_PORT $how"
}

stop_redis() {
    stop_pid redis
}

start_mqtt() {
    local dir="$ROOT/mqtt"
    if ! command -v mosquitto >/dev/null; then
        apt_install mosquitto
    fi
    local how=running
    if ! listening "$MQTT_PORT"; then
        how=started
        mkdir -p "$dir"
        rm -f "$dir/passwd"
        mosquitto_passwd -b -c "$dir/passwd" flumen flumen-test-secret
        local user=""
        [ "$(id -u)" -eq 0 ] && user="user root"
        cat > "$dir/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
allow_anonymous false
password_file $dir/passwd
persistence false
max_inflight_messages 0
max_queued_messages 0
log_dest stderr
$user
CONF
        nohup mosquitto -c "$dir/mosquitto.conf" > "$dir/server.log" 2>&1 < /dev/null &
        echo $! > "$dir/pid"
        await_server mqtt "$MQTT_PORT" 100 mosquitto "$dir/server.log"
    fi
    echo "mqtt tcp://127.0.0.1:$MQTT_PORT $how"
}

stop_mqtt() {
    stop_pid mqtt
}

action=start
if [ "${1:-}" = stop ]; then
    action=stop
    shift
fi
services=("$@")
[ ${#services[@]} -eq 0 ] && services=(postgres kafka nats s3 redis mqtt)
if [ "$action" = stop ]; then
    # Kafka keeps its topics in PostgreSQL: stop it first.
    mapfile -t services < <(printf '%s\n' "${services[@]}" | sort)
fi
for s in "${services[@]}"; do
    case "$s" in
        postgres) "${action}_postgres" ;;
        kafka) "${action}_kafka" ;;
        nats) "${action}_nats" ;;
        s3) "${action}_s3" ;;
        redis) "${action}_redis" ;;
        mqtt) "${action}_mqtt" ;;
        *) echo "services.sh: unknown server '$s'; known: postgres, kafka, nats, s3, redis, mqtt" >&2; exit 2 ;;
    esac
done
