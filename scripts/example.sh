#!/usr/bin/env bash
# Builds flumen and runs the example pipeline: a Nexmark bid stream from the
# embedded generator, filtered and projected, printed as a table.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flumen/target}"
scripts/setup.sh
cargo run --release --locked -p flumen -- run examples/big_bids.sql "$@"
