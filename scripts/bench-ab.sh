#!/usr/bin/env bash
# Compares two flumen binaries on Nexmark queries on a host whose speed
# drifts by a third within an hour (the 2-core KVM guests these benchmarks
# run on): the two runs of a pair go at the same time, each pinned to its
# own core, so that both see the same minute of the host; the binaries
# swap cores and start order every pair. Prints every pair with B's user
# time as a share of A's, then per query the medians of user seconds,
# system seconds and M events/s per core, and the geometric mean and range
# of the pairs' shares (each share compares runs of the same minute, so
# the host's drift between pairs cancels in it, not in a ratio of
# medians). Two A/A runs (one binary against itself, q4, 6 pairs of 10 M
# events) gave 1.12 (pairs 1.03–1.22) and then 1.02 (0.84–1.13): a single
# pair decides nothing, and six pairs nothing below ~10 %. A run that
# fails is named with the last line it wrote to standard error. Needs 2
# cores and release builds; stop other work (and the services:
# `scripts/services.sh stop`) first.
#
#   scripts/bench-ab.sh A_BINARY B_BINARY [QUERY…]
#
# Environment: EVENTS (default 20 M), PAIRS (default 6), P (default 1).
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,20p' "$0" >&2
    exit 2
fi
A="$1"
B="$2"
shift 2
QUERIES=("$@")
if [ ${#QUERIES[@]} -eq 0 ]; then
    QUERIES=(q18 q19 q9)
fi
EVENTS="${EVENTS:-20000000}"
PAIRS="${PAIRS:-6}"
P="${P:-1}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

run() { # binary core query label pair
    local err="$OUT/$3-$4-$5.err"
    taskset -c "$2" "$1" bench nexmark --query "$3" -p "$P" --events "$EVENTS" --runs 1 --json \
        2>"$err" | grep '^{' | sed "s/^{/{\"pair\":$5,/" >> "$OUT/$4.jsonl" || true
}

for q in "${QUERIES[@]}"; do
    for i in $(seq "$PAIRS"); do
        # Which binary starts first, and on which core, alternates.
        if [ $((i % 2)) -eq 1 ]; then
            run "$A" 0 "$q" A "$i" &
            run "$B" 1 "$q" B "$i" &
        else
            run "$B" 0 "$q" B "$i" &
            run "$A" 1 "$q" A "$i" &
        fi
        wait
    done
done

python3 - "$OUT" "$PAIRS" "${QUERIES[@]}" <<'EOF'
import json, math, statistics, sys
from pathlib import Path
out, pairs, queries = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
runs = {}
for label in ("A", "B"):
    path = out / f"{label}.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        r = json.loads(line)
        runs.setdefault((r["query"], label), {})[r["pair"]] = r
def figures(r):
    return r["cpu_s"] - r["sys_s"], r["sys_s"], r["events_per_core_s"] / 1e6
for q in queries:
    a, b = runs.get((q, "A"), {}), runs.get((q, "B"), {})
    for i in sorted(a.keys() & b.keys()):
        (ua, sa, ca), (ub, sb, cb) = figures(a[i]), figures(b[i])
        print(f"{q} pair {i}: A user {ua:.2f} s sys {sa:.2f} s {ca:.2f} M/s/core"
              f" | B user {ub:.2f} s sys {sb:.2f} s {cb:.2f} M/s/core | B/A user {ub / ua:.2f}")
for q in queries:
    for label in ("A", "B"):
        for i in range(1, pairs + 1):
            if i not in runs.get((q, label), {}):
                lines = (out / f"{q}-{label}-{i}.err").read_text().strip().splitlines()
                print(f"{q} pair {i}: {label} failed: {lines[-1] if lines else 'no output'}")
print()
print("| query | A user s | B user s | B / A user (pairs' geometric mean; range) | A sys s | B sys s | A M events/s per core | B M events/s per core |")
print("|---|---|---|---|---|---|---|---|")
for q in queries:
    a = [figures(r) for r in runs.get((q, "A"), {}).values()]
    b = [figures(r) for r in runs.get((q, "B"), {}).values()]
    if not a or not b:
        print(f"| {q} | (every run of A or of B failed) |")
        continue
    med = lambda rows, k: statistics.median(row[k] for row in rows)
    both = runs[(q, "A")].keys() & runs[(q, "B")].keys()
    shares = [figures(runs[(q, "B")][i])[0] / figures(runs[(q, "A")][i])[0] for i in both]
    share = (f"{math.exp(statistics.mean(math.log(s) for s in shares)):.2f}; "
             f"{min(shares):.2f}–{max(shares):.2f}" if shares else "no pair")
    print(f"| {q} | {med(a, 0):.2f} | {med(b, 0):.2f} | {share} "
          f"| {med(a, 1):.2f} | {med(b, 1):.2f} | {med(a, 2):.2f} | {med(b, 2):.2f} |")
EOF
