#!/usr/bin/env bash
# Everything CI runs: installs what the tests need, builds, lints, runs every test.
# Run from the repository root (or anywhere: it changes there). Needs ../shared beside the
# repository for the stack-file corpus (tests print "skipped" without it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker >/dev/null 2>&1; then
  # `docker stack config` is the reference loader of the differential test (no daemon needed).
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null) || echo "docker.io not installed: the differential test will be skipped"
  fi
fi
export SHOAL_COMPAT_DIR="${SHOAL_COMPAT_DIR:-$(pwd)/../shared/compat}"
cargo fmt --all -- --check
cargo build --workspace --all-targets
cargo clippy --workspace --all-targets -- -D warnings
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace
fi
