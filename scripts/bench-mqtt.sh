#!/usr/bin/env bash
# Measures the MQTT sink and source against the Mosquitto scripts/services.sh
# starts, QoS 1: Nexmark bids published to a topic (the sink waits for the
# broker's acknowledgements at every barrier and at the end), then read back
# by a job that resumes a persistent session holding all of them (the
# source acknowledges after each checkpoint, every second). Prints flumen's
# run summary of the writer, the reader's rows/s from its progress lines,
# and the CPU the broker spent meanwhile. Needs a release build
# (`cargo build --release -p flumen`).
#   EVENTS=1000000 scripts/bench-mqtt.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/flumen/target}"
FLUMEN="$TARGET/release/flumen"
EVENTS="${EVENTS:-1000000}"
URL="$(scripts/services.sh mqtt | awk '$1 == "mqtt" {print $2}')"
if [ "$(id -u)" -eq 0 ]; then
    ROOT="${FLUMEN_SERVICES:-/var/lib/flumen/services}"
else
    ROOT="${FLUMEN_SERVICES:-$HOME/.cache/flumen/services}"
fi
TICKS="$(getconf CLK_TCK)"
WORK="$(mktemp -d)"
ID="bench$$"
READER=""
cleanup() {
    [ -n "$READER" ] && kill "$READER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
broker_cpu() {
    awk -v t="$TICKS" '{printf "%.2f", ($14 + $15) / t}' "/proc/$(cat "$ROOT/mqtt/pid")/stat"
}

COLUMNS="auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3)"
MQTT="connector = 'mqtt', url = '$URL', topic = 'flumen/$ID', username = 'flumen',
  password = 'flumen-test-secret', qos = '1'"
cat > "$WORK/write.sql" <<SQL
CREATE TABLE bid ($COLUMNS) WITH (connector = 'nexmark', kind = 'bid', events = '$EVENTS');
CREATE TABLE topic ($COLUMNS) WITH ($MQTT);
INSERT INTO topic SELECT * FROM bid;
SQL
cat > "$WORK/read.sql" <<SQL
CREATE TABLE topic ($COLUMNS) WITH ($MQTT, 'client.id' = '$ID-reader');
CREATE TABLE sink ($COLUMNS) WITH (connector = 'blackhole');
INSERT INTO sink SELECT * FROM topic;
SQL

# The reader's persistent session: made by a first run, stopped at once.
(cd "$WORK" && exec "$FLUMEN" run read.sql --checkpoint-dir ck --checkpoint-interval 1s \
    > /dev/null 2> session.log) &
READER=$!
sleep 2
kill -TERM "$READER"
wait "$READER" || true
READER=""

echo "== sink: $EVENTS events of bids, about 92 % of them bids, published at QoS 1"
before="$(broker_cpu)"
(cd "$WORK" && "$FLUMEN" run write.sql --checkpoint-dir wck --checkpoint-interval 1s 2>&1 | tail -n 3)
echo "broker CPU: $(awk -v a="$before" -v b="$(broker_cpu)" 'BEGIN {printf "%.2f", b - a}') s"

echo "== source: the queued messages read back, checkpoints every second"
rows="$(awk -v e="$EVENTS" 'BEGIN {printf "%d", e * 0.92}')"
before="$(broker_cpu)"
(cd "$WORK" && exec "$FLUMEN" run read.sql --checkpoint-dir ck --checkpoint-interval 1s \
    > /dev/null 2> read.log) &
READER=$!
for _ in $(seq 1 600); do
    sleep 0.5
    line="$(grep -a 'rows in' "$WORK/read.log" | tail -n 1 || true)"
    n="$(sed -E 's/.*rows in ([0-9]+).*/\1/' <<< "$line")"
    if [ -n "$n" ] && [ "$n" -ge "$rows" ]; then
        break
    fi
done
kill -TERM "$READER"
wait "$READER" || true
READER=""
grep -a 'rows in' "$WORK/read.log" | awk -v want="$rows" '
    { t = $2; sub(/s\]/, "", t); n = $5 + 0 }
    n < want { last_t = t; last_n = n }
    n >= want && !done { printf "read %d rows in %.1f s of progress lines (%d by %.1f s)\n", n, t, last_n, last_t; done = 1 }'
grep -a "^done:" "$WORK/read.log" || true
echo "broker CPU: $(awk -v a="$before" -v b="$(broker_cpu)" 'BEGIN {printf "%.2f", b - a}') s"
