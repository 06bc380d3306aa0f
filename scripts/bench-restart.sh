#!/usr/bin/env bash
# Measures restart to first output after SIGKILL for Nexmark q20 holding
# about 1 GiB of join state: runs the job with checkpoints every 4 s, kills
# it with SIGKILL after 11 s, starts it again with the same command and
# prints the resumed run's summary. Needs a release build
# (`cargo build --release -p flumen`).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/flumen/target}"
FLUMEN="$TARGET/release/flumen"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# Bids and auctions throttled so both sides of the join grow together.
sed -e "s/kind = 'bid', events = '10000000'/kind = 'bid', events = '50000000', rows_per_second = '2300000'/" \
    -e "s/kind = 'auction', events = '10000000'/kind = 'auction', events = '50000000', rows_per_second = '150000'/" \
    benchmarks/nexmark/ddl/nexmark.sql > "$WORK/ddl.sql"
ARGS=(run "$WORK/ddl.sql" benchmarks/nexmark/q20.sql -p 1 --checkpoint-dir "$WORK/checkpoints" --checkpoint-interval 4s)
"$FLUMEN" "${ARGS[@]}" > /dev/null 2> "$WORK/first.err" &
PID=$!
sleep 11
kill -9 "$PID"
wait "$PID" 2>/dev/null || true
"$FLUMEN" checkpoints "$WORK/checkpoints"
"$FLUMEN" "${ARGS[@]}" 2>&1 > /dev/null | grep -E "resuming|resumed|done:|checkpoints:"
