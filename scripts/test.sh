#!/usr/bin/env bash
# Runs every check a change must pass: formatting, lints and all tests.
# The cargo target directory lives outside the checkout (reused across
# clones and CI runs) unless CARGO_TARGET_DIR says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flumen/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/setup.sh

# Each change of a crate's dependencies links new test executables (~580 MB
# each) beside the old ones in the shared target directory; keep the newest
# two of each name (the `flumen` binary and its unit tests share one) so the
# disk does not fill over many runs.
DEPS="$CARGO_TARGET_DIR/debug/deps"
if [ -d "$DEPS" ]; then
    find "$DEPS" -maxdepth 1 -type f -executable -regextype posix-extended \
        -regex '.*/[A-Za-z0-9_]+-[0-9a-f]{16}' -printf '%T@ %f\n' \
        | sort -rn \
        | awk '{ name = $2; sub(/-[0-9a-f]+$/, "", name); if (seen[name]++ >= 2) print $2 }' \
        | while read -r stale; do rm -f "$DEPS/$stale"; done
fi

# The servers the connector tests talk to, on loopback (installed when
# missing); the tests read their addresses from these variables. Servers
# this run started are stopped when it ends.
SERVICES="$(scripts/services.sh)"
STARTED=()
while read -r name url how; do
    case "$name" in
        postgres) export FLUMEN_POSTGRES_URL="$url" ;;
        kafka) export FLUMEN_KAFKA_BROKERS="$url" ;;
        nats) export FLUMEN_NATS_URL="$url" ;;
        s3) export FLUMEN_S3_ENDPOINT="$url" ;;
        redis) export FLUMEN_REDIS_URL="$url" ;;
        mqtt) export FLUMEN_MQTT_URL="$url" ;;
    esac
    if [ "$how" = started ]; then
        STARTED+=("$name")
    fi
done <<< "$SERVICES"
if [ ${#STARTED[@]} -gt 0 ]; then
    trap 'scripts/services.sh stop "${STARTED[@]}"' EXIT
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    echo "== cargo nextest run"
    cargo nextest run --workspace --all-targets --locked --no-fail-fast
else
    echo "== cargo test"
    cargo test --workspace --all-targets --locked --no-fail-fast
fi
