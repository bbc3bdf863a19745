#!/usr/bin/env bash
# The main job: a lab of five hosts on this machine (three managers, two workers, each a network
# namespace with its own shoald), examples/stacks/web.yml deployed as real containers spread over
# them on overlay networks; port 8080 answering on every host (the routing mesh); a worker
# container reaching `web` by name through its virtual IP; then the leader's host killed (daemon
# and containers at once): a new leader is elected, the lost replicas run elsewhere, and the
# cluster takes writes.
# The lab stays up for you to explore; `./target/release/shoal-lab down` removes all of it.
# Run as root from anywhere: it installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "run as root: the lab needs network namespaces, mounts and cgroups" >&2
  exit 1
fi
need=()
[ -x /bin/busybox ] || need+=(busybox-static)
command -v nsenter >/dev/null || need+=(util-linux)
command -v docker-registry >/dev/null || need+=(docker-registry)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --workspace --bins
bin=$(pwd)/target/release
lab=$bin/shoal-lab
shoal=$bin/shoal
export PATH="$bin:$PATH"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "shoal-lab up: 3 managers, 2 workers, and a registry every host pulls the test images from"
$lab up --managers 3 --workers 2 --registry
leader=$($lab status | awk '/\(leader\)/ {print $1}')
other=$($lab status | awk -v l="$leader" '$5 == "manager" && $1 != l {print $1; exit}')
eval "$($lab env "$other")"
echo "the CLI talks to $other (SHOAL_HOST=$SHOAL_HOST); $leader leads"

step "stack deploy, through a follower (it forwards writes to the leader)"
$shoal stack deploy --wait -c examples/stacks/web.yml web
$shoal stack ps web
$shoal node ls
echo "images on w1, pulled from the lab's registry where its tasks landed:"
(eval "$($lab env w1)"; $shoal image ls)

step "the routing mesh: port 8080 answers on every host, and spreads over the replicas"
for h in $($lab status | awk 'NR > 1 && $3 == "alive" {print $1 "=" $2}'); do
  printf '%-3s %-15s ' "${h%%=*}" "${h#*=}:8080"
  timeout 5 nsenter --net="/run/netns/shl-lab-m1" busybox wget -qO- "http://${h#*=}:8080/" || echo "(no answer)"
done

step "by name, from inside a web_worker container: DNS and the VIP of web_web"
task=$($shoal --format json service ps web_worker | python3 -c '
import json, sys
print(next(t["id"] + " " + t["node_id"] for t in json.load(sys.stdin) if t["status"]["state"] == "running"))')
set -- $task
host=$($shoal --format json node inspect "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["description"]["hostname"])')
pid=$(cat "/var/tmp/shoal-lab/lab/hosts/$host/data/containers/$1/init.pid")
echo "worker task $1 on $host:"
vip=$(nsenter -t "$pid" -n -m busybox nslookup web 2>/dev/null | awk '/^Name/ {n=1; next} n && /^Address/ {print $NF; exit}')
echo "web -> $vip (the VIP of web_web); tasks.web ->" $(nsenter -t "$pid" -n -m busybox nslookup tasks.web 2>/dev/null | awk '/^Name/ {n=1; next} n && /^Address/ {print $NF}')
echo "three requests to http://web:8080/, through the VIP:"
for _ in 1 2 3; do timeout 5 nsenter -t "$pid" -n -m busybox wget -qO- "http://$vip:8080/"; done

step "shoal-lab kill $leader: power loss on the leader's host (daemon and containers)"
start=$(date +%s.%N)
$lab kill "$leader"
for _ in $(seq 200); do
  new=$($lab status | awk '/\(leader\)/ {print $1}')
  [ -n "$new" ] && [ "$new" != "$leader" ] && break
  sleep 0.05
done
echo "new leader: $new, $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s after the kill"
for _ in $(seq 200); do
  $shoal node ls | grep -q " $leader .* down " && break
  sleep 0.05
done
echo "$leader marked down $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s after the kill; its replicas move"
for _ in $(seq 200); do
  $shoal service ls | grep -q 'web_web .* 3/3 ' && break
  sleep 0.05
done
echo "web_web back at 3/3 $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s after the kill"
$shoal service scale web_web=4
for _ in $(seq 200); do
  $shoal service ls | grep -q 'web_web .* 4/4 ' && break
  sleep 0.1
done
$lab status
$shoal service ls
$shoal stack ps web | grep -E '^ID|running +(running|starting|preparing|accepted|assigned)' 
$shoal node ls

step "the lab stays up"
cat <<MSG
Explore it:
  eval "\$($lab env m2)"; $shoal node ls
  $lab restart $leader        # boot the dead host again from its data root
  $lab cut m3 / heal m3        # drop a host's underlay link, then bring it back
  $lab exec w1 -- busybox ip addr   # run a command inside a host
Tear it down (every namespace, mount, cgroup and process): $lab down
MSG
