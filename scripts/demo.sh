#!/usr/bin/env bash
# The main job on one host: build shoal, start shoald (simulated executor) in a temporary
# directory, make it a one-manager cluster, deploy examples/stacks/web.yml, show what runs,
# then stop and clean up. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
dir=$(mktemp -d /tmp/shoal-demo.XXXXXX)
export SHOAL_HOST="unix://$dir/shoal.sock"
./target/release/shoald --data-root "$dir/data" --socket "$dir/shoal.sock" --log warn &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$dir/shoal.sock" ] && break; sleep 0.1; done
shoal=./target/release/shoal
$shoal cluster init
$shoal stack deploy --wait -c examples/stacks/web.yml web
$shoal service ls
$shoal stack ps web
$shoal service scale web_web=6
sleep 1
$shoal service ls
$shoal node ls
