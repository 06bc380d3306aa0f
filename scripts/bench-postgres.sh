#!/usr/bin/env bash
# Measures the postgres sink with checkpoints (exactly once): Nexmark bids
# appended row for row, and bids counted per auction upserted by key (an
# updating stream). Prints flumen's run summary (rows written, rows/s, CPU)
# and the CPU the PostgreSQL server spent (its postmaster's own and its
# exited backends'). Needs a release build (`cargo build --release -p flumen`).
#   EVENTS=10000000 scripts/bench-postgres.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/flumen/target}"
FLUMEN="$TARGET/release/flumen"
EVENTS="${EVENTS:-10000000}"
URL="$(scripts/services.sh postgres | awk '$1 == "postgres" {print $2}')"
if [ "$(id -u)" -eq 0 ]; then
    DATA="${FLUMEN_SERVICES:-/var/lib/flumen/services}/postgres/data"
else
    DATA="${FLUMEN_SERVICES:-$HOME/.cache/flumen/services}/postgres/data"
fi
POSTMASTER="$(head -n 1 "$DATA/postmaster.pid")"
TICKS="$(getconf CLK_TCK)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"; psql "$URL" -qc "DROP TABLE IF EXISTS bench_append, bench_upsert" >/dev/null 2>&1' EXIT

server_cpu() {
    awk -v t="$TICKS" '{printf "%.2f", ($14 + $15 + $16 + $17) / t}' "/proc/$POSTMASTER/stat"
}

psql "$URL" -qc "DROP TABLE IF EXISTS bench_append, bench_upsert;
  CREATE TABLE bench_append (auction bigint, bidder bigint, price bigint, channel text, date_time timestamp);
  CREATE TABLE bench_upsert (auction bigint PRIMARY KEY, n bigint, top bigint);"

cat > "$WORK/ddl.sql" <<SQL
CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3))
  WITH (connector = 'nexmark', kind = 'bid', events = '$EVENTS');
CREATE TABLE bench_append (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3))
  WITH (connector = 'postgres', url = '$URL', 'table-name' = 'bench_append');
CREATE TABLE bench_upsert (auction BIGINT, n BIGINT, top BIGINT, PRIMARY KEY (auction) NOT ENFORCED)
  WITH (connector = 'postgres', url = '$URL', 'table-name' = 'bench_upsert');
SQL
echo "INSERT INTO bench_append SELECT auction, bidder, price, channel, date_time FROM bid;" > "$WORK/append.sql"
echo "INSERT INTO bench_upsert SELECT auction, count(*), max(price) FROM bid GROUP BY auction;" > "$WORK/upsert.sql"

for job in append upsert; do
    before="$(server_cpu)"
    echo "== $job, $EVENTS events, checkpoints every 10 s"
    "$FLUMEN" run "$WORK/ddl.sql" "$WORK/$job.sql" -p 1 \
        --checkpoint-dir "$WORK/checkpoints-$job" --checkpoint-interval 10s 2>&1 >/dev/null |
        grep -E "^done:|checkpoints:"
    after="$(server_cpu)"
    echo "PostgreSQL server CPU: $(awk -v a="$after" -v b="$before" 'BEGIN {printf "%.2f", a - b}') s"
    psql "$URL" -tAc "SELECT '$job table rows: ' || count(*) FROM bench_$job"
done
