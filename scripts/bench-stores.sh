#!/usr/bin/env bash
# Measures the S3 and Redis sinks against the servers scripts/services.sh
# starts (s3s-fs on a local directory, redis-server in memory), with
# checkpoints every 10 s: Nexmark bids written to S3 as JSON and as
# Parquet (multipart uploads completed on commit), and bids counted per
# auction upserted into Redis strings (an updating stream) and every bid
# appended to a Redis stream. Prints flumen's run summary (rows, rows/s,
# CPU), the bytes the S3 sink committed with MB/s of wall clock, and the
# CPU the server spent meanwhile. Needs a release build
# (`cargo build --release -p flumen`).
#   EVENTS=5000000 scripts/bench-stores.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/flumen/target}"
FLUMEN="$TARGET/release/flumen"
EVENTS="${EVENTS:-5000000}"
SERVICES="$(scripts/services.sh s3 redis)"
S3="$(awk '$1 == "s3" {print $2}' <<< "$SERVICES")"
REDIS="$(awk '$1 == "redis" {print $2}' <<< "$SERVICES")"
if [ "$(id -u)" -eq 0 ]; then
    ROOT="${FLUMEN_SERVICES:-/var/lib/flumen/services}"
else
    ROOT="${FLUMEN_SERVICES:-$HOME/.cache/flumen/services}"
fi
TICKS="$(getconf CLK_TCK)"
WORK="$(mktemp -d)"
ID="bench$$"
REDIS_PORT="${REDIS##*:}"
redis() {
    redis-cli -p "$REDIS_PORT" -a flumen-test-secret --no-auth-warning "$@"
}
cleanup() {
    rm -rf "$WORK" "$ROOT/s3/data/flumen/$ID"
    redis --scan --pattern "$ID:*" | xargs -r -n 1000 redis-cli -p "$REDIS_PORT" \
        -a flumen-test-secret --no-auth-warning DEL >/dev/null
    redis DEL "$ID-stream" >/dev/null
}
trap cleanup EXIT

cpu_of() {
    awk -v t="$TICKS" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"
}

S3_OPTIONS="'s3.endpoint' = '$S3', 's3.access-key' = 'flumen', 's3.secret-key' = 'flumen-test-secret'"
COLUMNS="auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, date_time TIMESTAMP(3), extra VARCHAR"
cat > "$WORK/ddl.sql" <<SQL
CREATE TABLE bid ($COLUMNS) WITH (connector = 'nexmark', kind = 'bid', events = '$EVENTS');
CREATE TABLE s3_json ($COLUMNS) WITH (connector = 'filesystem', path = 's3://flumen/$ID/json/',
  format = 'json', $S3_OPTIONS);
CREATE TABLE s3_parquet ($COLUMNS) WITH (connector = 'filesystem', path = 's3://flumen/$ID/parquet/',
  format = 'parquet', $S3_OPTIONS);
CREATE TABLE redis_upsert (auction BIGINT, n BIGINT, top BIGINT, PRIMARY KEY (auction) NOT ENFORCED)
  WITH (connector = 'redis', url = '$REDIS', 'key.prefix' = '$ID:');
CREATE TABLE redis_stream (auction BIGINT, bidder BIGINT, price BIGINT)
  WITH (connector = 'redis', url = '$REDIS', 'data-type' = 'stream', 'key.prefix' = '$ID-stream');
SQL
echo "INSERT INTO s3_json SELECT * FROM bid;" > "$WORK/s3_json.sql"
echo "INSERT INTO s3_parquet SELECT * FROM bid;" > "$WORK/s3_parquet.sql"
echo "INSERT INTO redis_upsert SELECT auction, count(*), max(price) FROM bid GROUP BY auction;" > "$WORK/redis_upsert.sql"
echo "INSERT INTO redis_stream SELECT auction, bidder, price FROM bid;" > "$WORK/redis_stream.sql"

for job in s3_json s3_parquet redis_upsert redis_stream; do
    case "$job" in
        s3*) server="$(cat "$ROOT/s3/pid")" ;;
        redis*) server="$(cat "$ROOT/redis/pid")" ;;
    esac
    before="$(cpu_of "$server")"
    start="$(date +%s.%N)"
    echo "== $job, $EVENTS events, checkpoints every 10 s"
    "$FLUMEN" run "$WORK/ddl.sql" "$WORK/$job.sql" -p 1 \
        --checkpoint-dir "$WORK/checkpoints-$job" --checkpoint-interval 10s 2>&1 >/dev/null |
        grep -E "^done:|checkpoints:"
    end="$(date +%s.%N)"
    after="$(cpu_of "$server")"
    echo "server CPU: $(awk -v a="$after" -v b="$before" 'BEGIN {printf "%.2f", a - b}') s"
    case "$job" in
        s3_json) dir=json ;;
        s3_parquet) dir=parquet ;;
        *) dir= ;;
    esac
    if [ -n "$dir" ]; then
        bytes="$(du -sb "$ROOT/s3/data/flumen/$ID/$dir" | cut -f1)"
        awk -v b="$bytes" -v s="$start" -v e="$end" \
            'BEGIN {printf "committed %.1f MB, %.1f MB/s of wall clock\n", b / 1e6, b / 1e6 / (e - s)}'
    fi
done
echo "redis keys: $(redis --scan --pattern "$ID:*" | wc -l), stream entries: $(redis XLEN "$ID-stream")"
