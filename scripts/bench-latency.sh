#!/usr/bin/env bash
# Measures the latency table of BENCHMARKS.md: for each query and
# parallelism, the maximum rate (median wall-clock events/s of 3
# unthrottled runs of 20 M events), then runs in real time at 10 %, 50 %
# and 90 % of it (`--rate-limit`), 3 runs of ~6 s each, and prints one
# Markdown row per load with the medians of the latency figures in ms.
# q7 runs at 100,000 events/s of event time so that its 10 s windows close
# several times a second. Needs a release build
# (`cargo build --release -p flumen`); stop other work first (and the
# services: `scripts/services.sh stop`).
#
#   scripts/bench-latency.sh [QUERY…]      (default: q1 q7)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/flumen/target}"
FLUMEN="${FLUMEN:-$TARGET/release/flumen}"
QUERIES=("$@")
[ ${#QUERIES[@]} -gt 0 ] || QUERIES=(q1 q7)

# The median of each named key over the JSON lines on stdin, space-separated.
medians() {
    python3 -c '
import json, statistics, sys
runs = [json.loads(l) for l in sys.stdin if l.startswith("{")]
print(" ".join(
    "%.2f" % statistics.median(r[k] for r in runs) if all(k in r for r in runs) else "-"
    for k in sys.argv[1:]))' "$@"
}

echo "| query | p | max rate (M events/s) | load | latency p50 | p99 | p99.9 | max | emission delay p50 | p99 |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for q in "${QUERIES[@]}"; do
    extra=()
    [ "$q" = q7 ] && extra=(--rate 100000)
    for p in 1 2; do
        max=$("$FLUMEN" bench nexmark --query "$q" -p "$p" --events 20000000 --runs 3 --json "${extra[@]}" 2>/dev/null | medians events_per_s)
        shown=$(python3 -c "print('%.1f' % ($max / 1e6))")
        for load in 10 50 90; do
            rate=$(python3 -c "print(int($max * $load / 100))")
            read -r p50 p99 p999 pmax d50 d99 < <("$FLUMEN" bench nexmark --query "$q" -p "$p" \
                --rate-limit "$rate" --events $((rate * 6)) --runs 3 --json "${extra[@]}" 2>/dev/null \
                | medians latency_p50_ms latency_p99_ms latency_p999_ms latency_max_ms emission_delay_p50_ms emission_delay_p99_ms)
            [ "$d50" = - ] && d50="" && d99=""
            echo "| $q | $p | $shown | $load % | $p50 | $p99 | $p999 | $pmax | $d50 | $d99 |"
            shown=""
        done
    done
done
