#!/usr/bin/env bash
# The main job on one host: build shoal, start shoald in a temporary directory, make it a
# one-manager cluster, import the busybox image (made from Debian's busybox-static), deploy
# examples/stacks/web.yml as real containers, send a request to one of them, show the logs,
# scale, then remove everything. Run as root from anywhere: it installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "run as root: containers need namespaces, mounts and cgroups" >&2
  exit 1
fi
if [ ! -x /bin/busybox ] || ! command -v nsenter >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static util-linux >/dev/null
fi
cargo build --release --workspace --bins
dir=$(mktemp -d /tmp/shoal-demo.XXXXXX)
export SHOAL_HOST="unix://$dir/shoal.sock"
shoal=./target/release/shoal
./target/release/shoald --data-root "$dir/data" --socket "$dir/shoal.sock" \
  --exec-root "$dir/run" --cgroup-parent /shoal-demo --log warn &
pid=$!
cleanup() {
  $shoal stack rm web >/dev/null 2>&1 || true
  # Containers stop on their own (their shell traps TERM); wait until they are gone.
  for _ in $(seq 100); do
    [ -z "$(ls -A "$dir/data/containers" 2>/dev/null)" ] && break
    sleep 0.1
  done
  kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
  for c in /sys/fs/cgroup/*/shoal-demo; do rmdir "$c" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$dir/shoal.sock" ] && break; sleep 0.1; done

$shoal cluster init
./target/release/shoal-test-images "$dir/images" >/dev/null
$shoal image import "$dir/images/busybox.tar" --tag busybox:latest --change 'CMD ["sh"]'
$shoal image ls
$shoal stack deploy --wait -c examples/stacks/web.yml web
$shoal stack ps web

# Ask one replica for its page, from inside its network namespace (published ports and overlay
# networks come with the networking work).
task=$($shoal --format json service ps web_web | python3 -c 'import json,sys; print([t["id"] for t in json.load(sys.stdin) if t["status"]["state"]=="running"][0])')
cpid=$(cat "$dir/data/containers/$task/init.pid")
echo "GET http://127.0.0.1:8080/ in the network namespace of task $task:"
nsenter --net="/proc/$cpid/ns/net" busybox wget -qO- http://127.0.0.1:8080/

sleep 2
$shoal service logs --tail 3 web_worker
$shoal service scale web_web=6
for _ in $(seq 100); do
  $shoal service ls | grep -q ' 6/6 ' && break
  sleep 0.1
done
$shoal service ls
$shoal node ls
