#!/usr/bin/env bash
# Installs what building flumen needs and a fresh machine may lack: the
# Rust toolchain's rustfmt and clippy components. The servers the connector
# tests need are installed and started by scripts/services.sh.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
    echo "flumen needs a Rust toolchain (cargo); install it with rustup first" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
            rustup component add "$component"
        fi
    done
fi
