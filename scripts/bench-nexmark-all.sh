#!/usr/bin/env bash
# Measures the all-queries table of BENCHMARKS.md: every shipped Nexmark
# query (q0–q22; q6 is not shipped) at parallelism 1 and 2, EVENTS events
# (default 100 M), RUNS runs (default 3), each in its own process, so that
# every run pays for the memory its state first touches as a fresh job does
# (a second run in one process reuses pages the first faulted in); q3 and
# q8 with `--generate-all`, so that their events are all three kinds, as
# Flink's figures count them. Prints one Markdown row per query with the
# medians (and, below the table, each query's system time and per-core
# rate on user time alone at p=1),
# and keeps every run's JSON line in $OUT (default
# /tmp/flumen-nexmark-all.jsonl). Needs a release build
# (`cargo build --release -p flumen`); stop other work first (and the
# services: `scripts/services.sh stop`). About 40 minutes at 100 M events
# on the 2-core VM.
#
#   scripts/bench-nexmark-all.sh [QUERY…]
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/flumen/target}"
FLUMEN="${FLUMEN:-$TARGET/release/flumen}"
EVENTS="${EVENTS:-100000000}"
RUNS="${RUNS:-3}"
OUT="${OUT:-/tmp/flumen-nexmark-all.jsonl}"
QUERIES=("$@")
if [ ${#QUERIES[@]} -eq 0 ]; then
    QUERIES=(q0 q1 q2 q3 q4 q5 q7 q8 q9 q10 q11 q12 q13 q14 q15 q16 q17 q18 q19 q20 q21 q22)
fi
: > "$OUT"
for q in "${QUERIES[@]}"; do
    extra=()
    case "$q" in q3 | q8) extra=(--generate-all) ;; esac
    for p in 1 2; do
        for _ in $(seq "$RUNS"); do
            "$FLUMEN" bench nexmark --query "$q" -p "$p" --events "$EVENTS" --runs 1 --json "${extra[@]}" \
                2>/dev/null | grep '^{' >> "$OUT" || echo "{\"query\":\"$q\",\"parallelism\":$p,\"failed\":true}" >> "$OUT"
        done
    done
done
python3 - "$OUT" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
print("| query | events generated | p=1 M events/s | p=1 M events/s per core | p=2 M events/s | p=2 M events/s per core | p=2 / p=1 wall | peak RSS (p=1 / p=2) | peak state (p=1 / p=2) |")
print("|---|---|---|---|---|---|---|---|---|")
for q in dict.fromkeys(r["query"] for r in runs):
    at = {p: [r for r in runs if r["query"] == q and r["parallelism"] == p and not r.get("failed")] for p in (1, 2)}
    if not at[1] or not at[2]:
        print(f"| {q} | (missing: {', '.join(f'p={p} failed' for p in (1, 2) if not at[p])}) |")
        continue
    med = lambda p, k: statistics.median(r[k] for r in at[p])
    peak = lambda p, k: max(r[k] for r in at[p]) / 2**20
    print(f"| {q} | {med(1, 'events') / 1e6:.1f} M | {med(1, 'events_per_s') / 1e6:.2f} | {med(1, 'events_per_core_s') / 1e6:.2f} "
          f"| {med(2, 'events_per_s') / 1e6:.2f} | {med(2, 'events_per_core_s') / 1e6:.2f} | {med(2, 'events_per_s') / med(1, 'events_per_s'):.2f}× "
          f"| {peak(1, 'peak_rss_bytes'):.0f} / {peak(2, 'peak_rss_bytes'):.0f} MiB | {peak(1, 'peak_state_bytes'):.0f} / {peak(2, 'peak_state_bytes'):.0f} MiB |")
print()
print("p=1 runs: system s (page faults), and M events/s per core on user time alone")
for q in dict.fromkeys(r["query"] for r in runs):
    ones = [r for r in runs if r["query"] == q and r["parallelism"] == 1 and not r.get("failed")]
    cells = [f"{r['sys_s']:.1f} s ({r['page_faults'] / 1e6:.2f} M) {r['events'] / (r['cpu_s'] - r['sys_s']) / 1e6:.2f}" for r in ones]
    print(f"- {q}: " + "; ".join(cells))
EOF
