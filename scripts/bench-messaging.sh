#!/usr/bin/env bash
# Measures the kafka and nats connectors against the servers
# scripts/services.sh starts (tansu in memory, nats-server with JetStream):
# EVENTS Nexmark events' bids are loaded as JSON into a topic of 3
# partitions and a stream of 3 subjects, then read back bounded, RUNS times
# each: the source alone (into blackhole), and Nexmark q1 end to end (source,
# q1's projection, sink to another topic or subject). Prints flumen's run
# summary (rows, rows/s, rows/s per core of flumen's CPU) and the CPU the
# broker spent meanwhile. Needs a release build
# (`cargo build --release -p flumen`).
#   EVENTS=2000000 RUNS=3 scripts/bench-messaging.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/flumen/target}"
FLUMEN="$TARGET/release/flumen"
EVENTS="${EVENTS:-2000000}"
RUNS="${RUNS:-3}"
P="${PARALLELISM:-1}"
if [ "$(id -u)" -eq 0 ]; then
    TOOLS="${FLUMEN_TOOLS:-/var/lib/flumen/tools}"
else
    TOOLS="${FLUMEN_TOOLS:-$HOME/.cache/flumen/tools}"
fi
SERVICES="$(scripts/services.sh kafka nats)"
BROKERS="$(awk '$1 == "kafka" {print $2}' <<< "$SERVICES")"
NATS="$(awk '$1 == "nats" {print $2}' <<< "$SERVICES")"
TICKS="$(getconf CLK_TCK)"
WORK="$(mktemp -d)"
ID="bench$$"
NATS_PORT="${NATS##*:}"

# Deletes JetStream stream $1 through the NATS protocol (no client needed).
delete_stream() {
    exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT"
    printf 'CONNECT {"verbose":false}\r\nPUB $JS.API.STREAM.DELETE.%s 0\r\n\r\nPING\r\n' "$1" >&3
    timeout 2 head -c 100 <&3 >/dev/null || true
    exec 3>&-
}

cleanup() {
    rm -rf "$WORK"
    delete_stream "${ID}_in"
    delete_stream "${ID}_out"
    "$TOOLS/bin/tansu" topic delete "$ID-in" --broker "tcp://$BROKERS" >/dev/null 2>&1 || true
    "$TOOLS/bin/tansu" topic delete "$ID-out" --broker "tcp://$BROKERS" >/dev/null 2>&1 || true
}
trap cleanup EXIT

cpu_of() {
    awk -v t="$TICKS" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"
}

"$TOOLS/bin/tansu" topic create "$ID-in" --partitions 3 --broker "tcp://$BROKERS" >/dev/null
"$TOOLS/bin/tansu" topic create "$ID-out" --partitions 3 --broker "tcp://$BROKERS" >/dev/null

COLUMNS="auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3), extra VARCHAR"
cat > "$WORK/load.sql" <<SQL
CREATE TABLE bid ($COLUMNS) WITH (connector = 'nexmark', kind = 'bid', events = '$EVENTS');
CREATE TABLE topic_in ($COLUMNS) WITH (connector = 'kafka', topic = '$ID-in',
  'properties.bootstrap.servers' = '$BROKERS', format = 'json', 'key.fields' = 'auction');
CREATE TABLE subject_in ($COLUMNS) WITH (connector = 'nats', servers = '$NATS',
  subject = '$ID.in', stream = '${ID}_in', format = 'json');
INSERT INTO topic_in SELECT * FROM bid;
INSERT INTO subject_in SELECT * FROM bid;
SQL
echo "== loading the bids of $EVENTS events"
"$FLUMEN" run "$WORK/load.sql" -p 1 2>&1 >/dev/null | grep -E "^done:"

Q1_COLUMNS="auction BIGINT, bidder BIGINT, price DOUBLE, date_time TIMESTAMP(3), extra VARCHAR"
Q1="SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid"
cat > "$WORK/kafka.sql" <<SQL
CREATE TABLE bid ($COLUMNS) WITH (connector = 'kafka', topic = '$ID-in',
  'properties.bootstrap.servers' = '$BROKERS', format = 'json',
  'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
SQL
cat > "$WORK/nats.sql" <<SQL
CREATE TABLE bid ($COLUMNS) WITH (connector = 'nats', servers = '$NATS', stream = '${ID}_in',
  format = 'json', 'scan.startup.mode' = 'earliest', 'scan.bounded.mode' = 'latest');
SQL
cat > "$WORK/read.sql" <<SQL
CREATE TABLE sink ($COLUMNS) WITH (connector = 'blackhole');
INSERT INTO sink SELECT * FROM bid;
SQL
cat > "$WORK/kafka_q1.sql" <<SQL
CREATE TABLE q1 ($Q1_COLUMNS) WITH (connector = 'kafka', topic = '$ID-out',
  'properties.bootstrap.servers' = '$BROKERS', format = 'json');
INSERT INTO q1 $Q1;
SQL
cat > "$WORK/nats_q1.sql" <<SQL
CREATE TABLE q1 ($Q1_COLUMNS) WITH (connector = 'nats', servers = '$NATS',
  subject = '$ID.out', stream = '${ID}_out', format = 'json',
  'sink.delivery-guarantee' = 'exactly-once');
INSERT INTO q1 $Q1;
SQL

run() {
    local name="$1" server_pid="$2"
    shift 2
    for i in $(seq 1 "$RUNS"); do
        local before after
        before="$(cpu_of "$server_pid")"
        printf '%s run %s: ' "$name" "$i"
        "$FLUMEN" "$@" 2>&1 >/dev/null | grep -E "^done:" | tr -d '\n'
        after="$(cpu_of "$server_pid")"
        echo "; server CPU $(awk -v a="$after" -v b="$before" 'BEGIN {printf "%.2f", a - b}') s"
    done
}

# The servers' processes, by the port they listen on.
pid_on_port() {
    ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2
}
KAFKA_PID="$(pid_on_port "${BROKERS##*:}")"
NATS_PID="$(pid_on_port "$NATS_PORT")"
echo "== p=$P, $RUNS runs each"
run "kafka source -> blackhole" "$KAFKA_PID" run "$WORK/kafka.sql" "$WORK/read.sql" -p "$P"
run "nats source -> blackhole" "$NATS_PID" run "$WORK/nats.sql" "$WORK/read.sql" -p "$P"
run "kafka q1 -> kafka (at-least-once, checkpoints 10 s)" "$KAFKA_PID" run "$WORK/kafka.sql" \
    "$WORK/kafka_q1.sql" -p "$P" --fresh --checkpoint-dir "$WORK/ck-kafka" --checkpoint-interval 10s
run "nats q1 -> nats (exactly-once, checkpoints 10 s)" "$NATS_PID" run "$WORK/nats.sql" \
    "$WORK/nats_q1.sql" -p "$P" --fresh --checkpoint-dir "$WORK/ck-nats" --checkpoint-interval 10s
