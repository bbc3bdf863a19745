#!/usr/bin/env bash
# Everything CI runs: installs what the tests need, builds, lints, runs every test.
# Run from the repository root (or anywhere: it changes there). Needs ../shared beside the
# repository for the stack-file corpus (tests print "skipped" without it).
set -euo pipefail
cd "$(dirname "$0")/.."
# What the tests use from Debian: `docker stack config` (the reference loader of the
# differential stack-file test; no daemon needed), busybox-static (the busybox image), runc (the
# differential runtime test), skopeo (OCI image layouts), nsenter, iproute2 and nftables (tests
# look inside namespaces with `ip` and read shoal's rules back with `nft`, and one cuts Raft
# traffic between managers only; shoal and its lab need neither). Container and lab
# tests need root; as a user they print "skipped" with the reason, and under CI=true (as CI
# runs) they fail instead.
if [ "$(id -u)" = 0 ]; then
  need=()
  command -v docker >/dev/null 2>&1 || need+=(docker.io)
  [ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static file)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  command -v crun >/dev/null 2>&1 || need+=(crun)
  command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
  command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
  command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v nft >/dev/null 2>&1 || need+=(nftables)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  if [ ${#need[@]} -gt 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
      || echo "could not install ${need[*]}: the tests that need them will say they skipped"
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
