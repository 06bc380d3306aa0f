#!/usr/bin/env bash
# Measures lookup joins of Nexmark bids with a customer table keyed by
# bidder, held in the PostgreSQL and the Redis that scripts/services.sh
# starts: with the default cache (10,000 keys per subtask, 60 s) and
# without one (every distinct key of every batch read). Prints flumen's run
# summary and the CPU the server spent meanwhile. Needs a release build
# (`cargo build --release -p flumen`).
#   EVENTS=10000000 CUSTOMERS=100000 scripts/bench-lookup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/flumen/target}"
FLUMEN="$TARGET/release/flumen"
EVENTS="${EVENTS:-10000000}"
CUSTOMERS="${CUSTOMERS:-100000}"
PG="$(scripts/services.sh postgres | awk '$1 == "postgres" {print $2}')"
REDIS="$(scripts/services.sh redis | awk '$1 == "redis" {print $2}')"
if [ "$(id -u)" -eq 0 ]; then
    ROOT="${FLUMEN_SERVICES:-/var/lib/flumen/services}"
else
    ROOT="${FLUMEN_SERVICES:-$HOME/.cache/flumen/services}"
fi
TICKS="$(getconf CLK_TCK)"
WORK="$(mktemp -d)"
TABLE="bench_lookup_$$"
PREFIX="bench-lookup-$$:"
# redis://:password@host:port as redis-cli's own options.
REDIS_HOSTPORT="${REDIS##*@}"
REDIS_PASSWORD="${REDIS#redis://:}"
REDIS_PASSWORD="${REDIS_PASSWORD%@*}"
REDIS_CLI=(redis-cli --no-auth-warning -h "${REDIS_HOSTPORT%:*}" -p "${REDIS_HOSTPORT##*:}" -a "$REDIS_PASSWORD")
cleanup() {
    psql "$PG" -qc "DROP TABLE IF EXISTS $TABLE" > /dev/null 2>&1 || true
    "${REDIS_CLI[@]}" --scan --pattern "$PREFIX*" | xargs -r -n 1000 "${REDIS_CLI[@]}" DEL > /dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
# CPU seconds of every process of a server (PostgreSQL forks per connection).
server_cpu() {
    local total=0
    for pid in $(pgrep -f "$1"); do
        total=$(awk -v t="$TICKS" -v s="$total" '{printf "%.2f", s + ($14 + $15 + $16 + $17) / t}' "/proc/$pid/stat" 2>/dev/null || echo "$total")
    done
    echo "$total"
}

psql "$PG" -qc "CREATE TABLE $TABLE (id bigint PRIMARY KEY, name text, tier int);
  INSERT INTO $TABLE SELECT g, 'customer ' || g, g % 4 FROM generate_series(1000, 1000 + $CUSTOMERS) g;" > /dev/null
seq 1000 $((1000 + CUSTOMERS)) | awk -v p="$PREFIX" '{printf "HSET %s%d name \"customer %d\" tier %d\n", p, $1, $1, $1 % 4}' \
    | "${REDIS_CLI[@]}" > /dev/null

BID="auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3)"
for server in postgres redis; do
    if [ "$server" = postgres ]; then
        WITH="connector = 'postgres', url = '$PG', 'table-name' = '$TABLE'"
        PATTERN="postgres"
    else
        WITH="connector = 'redis', url = '$REDIS', 'data-type' = 'hash', 'key.fields' = 'id', 'key.prefix' = '$PREFIX'"
        PATTERN="redis-server"
    fi
    for cache in PARTIAL NONE; do
        cat > "$WORK/job.sql" <<SQL
CREATE TABLE bid ($BID) WITH (connector = 'nexmark', kind = 'bid', events = '$EVENTS');
CREATE TABLE customers (id BIGINT, name VARCHAR, tier INT) WITH ($WITH, 'lookup.cache' = '$cache');
CREATE TABLE sink (auction BIGINT, price BIGINT, name VARCHAR, tier INT) WITH (connector = 'blackhole');
INSERT INTO sink SELECT b.auction, b.price, c.name, c.tier
FROM bid AS b JOIN customers FOR SYSTEM_TIME AS OF b.date_time AS c ON b.bidder = c.id;
SQL
        echo "== $server, lookup.cache = $cache, $EVENTS events"
        before="$(server_cpu "$PATTERN")"
        (cd "$WORK" && "$FLUMEN" run job.sql 2>&1 | tail -n 2)
        after="$(server_cpu "$PATTERN")"
        echo "server CPU: $(awk -v a="$after" -v b="$before" 'BEGIN {printf "%.2f", a - b}') s"
    done
done
