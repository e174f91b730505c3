#!/usr/bin/env bash
# A Ray cluster on this one machine for trying livesnap's cluster mode (docs/cluster.md,
# "A staging cluster on one machine"): a head and N worker nodes, every node on 127.0.0.1 and
# every Ray listener on loopback, Ray's token authentication on, the fast health checks.
#
#   scripts/staging-cluster.sh start [--workers N] [--shards S] [--database-url URL] [--dir DIR]
#                                    [--redis HOST:PORT]
#   scripts/staging-cluster.sh status [--dir DIR]
#   scripts/staging-cluster.sh kill-head [--dir DIR]
#   scripts/staging-cluster.sh start-head [--dir DIR]
#   scripts/staging-cluster.sh stop [--dir DIR]
#
# start prints the livesnap commands to run against it. With --redis the head keeps the
# cluster's state (Ray's GCS) in that Redis, so the head can fail: kill-head kills the head's
# processes (SIGKILL), and start-head starts a new head on the same address with the same
# Redis, which the other nodes and their shards reconnect to (docs/cluster.md, "When the head
# fails"). stop ends this cluster's processes only (not `ray stop`, which ends every Ray
# process on the machine) and removes its Ray files and its keys in Redis (each start uses a
# namespace of its own); DIR/data (snapshots, access keys) stays. Defaults: 2 workers, 6 shards,
# DIR=${TMPDIR:-/tmp}/livesnap-staging-$UID, URL=$LIVESNAP_DATABASE_URL.
#
# Python: $PYTHON, else .venv/bin/python of this checkout, else python3; it needs livesnap and
# Ray (pip install 'livesnap[ray]'): the shards run in worker processes of that Python.
set -euo pipefail

usage() {
  sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

action=${1:-}
case $action in start | status | stop | kill-head | start-head) ;; *) usage ;; esac
shift
workers=2
shards=6
dir=${TMPDIR:-/tmp}/livesnap-staging-$(id -u)
database_url=${LIVESNAP_DATABASE_URL:-}
redis=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --workers) workers=${2:?}; shift 2 ;;
    --shards) shards=${2:?}; shift 2 ;;
    --database-url) database_url=${2:?}; shift 2 ;;
    --dir) dir=${2:?}; shift 2 ;;
    --redis) redis=${2:?}; shift 2 ;;
    *) usage ;;
  esac
done
[[ $workers =~ ^[0-9]+$ && $shards =~ ^[1-9][0-9]*$ ]] || usage
[[ $action != start ]] || mkdir -p "$dir"
[[ ! -d $dir ]] || dir=$(cd "$dir" && pwd -P)
# Ray's AF_UNIX sockets live under DIR/ray/session_<date>_<pid>/sockets/: 107 bytes at most
if [[ ${#dir} -gt 36 ]]; then
  echo "staging-cluster: $dir is too long for Ray's socket paths (36 characters at most)" >&2
  exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n ${PYTHON:-} ]]; then
  py=$PYTHON
elif [[ -x $repo/.venv/bin/python ]]; then
  py=$repo/.venv/bin/python
else
  py=$(command -v python3)
fi

# The processes of this cluster: Ray's own (gcs_server, raylet, ray::*, Ray's Python helpers)
# with a file open under DIR (each logs into DIR/ray), DIR in its command line, or the marker
# in its environment. A Ray process that renames itself (ray::RuntimeEnvAgent) can blank its
# environment, and an agent outlives its raylet as a child of init, so neither the
# environment nor the parent finds them all.
cluster_pids() {
  local proc pid comm cmd state
  local -a args
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    { read -r comm <"$proc/comm"; } 2>/dev/null || continue
    case $comm in
      gcs_server | raylet | ray::* | python*) ;;
      *) continue ;;
    esac
    { mapfile -d '' args <"$proc/cmdline"; } 2>/dev/null || continue
    cmd="${args[*]}"
    [[ $comm != python* || $cmd == */ray/* || $cmd == ray::* ]] || continue
    if [[ $cmd == *"$dir/"* ]] ||
      grep -qzxF "LIVESNAP_STAGING_DIR=$dir" "$proc/environ" 2>/dev/null ||
      [[ -n $(find "$proc/fd" -maxdepth 1 -lname "$dir/*" -print -quit 2>/dev/null) ]]; then
      state=Z
      { read -r _ _ state _ <"$proc/stat"; } 2>/dev/null || true
      [[ $state == Z ]] || echo "$pid"  # a zombie is gone already (init reaps it)
    fi
  done
}

# Listening TCP sockets of these processes that are not on loopback (ss is in iproute2).
open_listeners() {
  local pids=$1 pid
  command -v ss >/dev/null || return 0
  ss -ltnpH 2>/dev/null | while read -r _ _ _ local _ users; do
    [[ $local == 127.0.0.1:* || $local == "[::ffff:127.0.0.1]:"* ]] && continue
    for pid in $pids; do
      [[ $users == *"pid=$pid,"* ]] && echo "  $local $users"
    done
  done || true
}

# Ray keeps an address of 127.0.0.1 only while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Linux
# defaults it to 1 and rewrites 127.0.0.1 to this machine's network address), and only a node
# on 127.0.0.1 listens on loopback alone: any other node address means every interface.
ray_env() {
  env RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_TMPDIR="$dir" \
    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$dir/auth_token" LIVESNAP_STAGING_DIR="$dir" "$@"
}

start() {
  if [[ -n $(cluster_pids) ]]; then
    echo "staging-cluster: a staging cluster runs in $dir already (stop it first)" >&2
    exit 1
  fi
  rm -rf "$dir/ray" "$dir"/w[0-9]* "$dir/auth_token" "$dir/env.sh" "$dir/head.json"
  (umask 077 && "$py" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$dir/auth_token")
  # `ray start` refuses to add a worker node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so the
  # nodes come from ray.cluster_utils.Cluster, which starts each node's processes as `ray start`
  # does; shutdown_at_exit=False leaves them running when this Python exits. Each worker has a
  # temp directory of its own (DIR/wN), so that the head's processes are those under DIR/ray
  # (kill-head) and a livesnap process can attach to a worker (LIVESNAP_RAY_TEMP_DIR).
  local out
  out=$(ray_env STAGING_WORKERS="$workers" STAGING_SHARDS="$shards" STAGING_REDIS="$redis" \
    "$py" - <<'PY'
import json
import os
import secrets
import sys

from ray.cluster_utils import Cluster

base = os.environ["RAY_TMPDIR"]
# the fast health checks of docs/cluster.md: a dead node is noticed in about 2 s
fast = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
        "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
node = {"num_cpus": 1, "resources": {"shard": int(os.environ["STAGING_SHARDS"])},
        "object_store_memory": 80 << 20}
head = {**node, "include_dashboard": False, "temp_dir": f"{base}/ray", "_system_config": fast}
redis = os.environ["STAGING_REDIS"]
# a namespace of this start's own: a head finding another cluster's state under its
# namespace would take that cluster over
namespace = f"livesnap-staging-{os.getuid()}-{secrets.token_hex(4)}" if redis else ""
if redis:  # the head's GCS keeps the cluster's state there (read as the head starts)
    os.environ.update(RAY_REDIS_ADDRESS=redis, RAY_external_storage_namespace=namespace)
cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args=head)
os.environ.pop("RAY_REDIS_ADDRESS", None)
for i in range(int(os.environ["STAGING_WORKERS"])):
    cluster.add_node(**node, temp_dir=f"{base}/w{i + 1}")
cluster.wait_for_nodes(timeout=60)
port = cluster.head_node._ray_params.gcs_server_port
with open(f"{base}/head.json", "w") as f:  # what start-head needs to start the same head again
    json.dump({**head, "gcs_server_port": port, "redis": redis, "namespace": namespace}, f)
print(cluster.address)
sys.stdout.flush()
os._exit(0)  # no teardown: the nodes are meant to outlive this process
PY
  ) || {
    echo "staging-cluster: Ray did not start (logs: $dir/ray/session_latest/logs)" >&2
    stop >&2
    exit 1
  }
  local addr=${out##*$'\n'}
  cat >"$dir/env.sh" <<EOF
# the staging cluster in $dir (scripts/staging-cluster.sh): source it before livesnap
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # keep 127.0.0.1 (Ray would rewrite it)
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$dir/auth_token
export RAY_USAGE_STATS_ENABLED=0
export LIVESNAP_RAY_ADDRESS=$addr
EOF
  # livesnap's own Ray drivers on the first worker, not on the head: they outlive the head
  [[ $workers -eq 0 ]] || echo "export LIVESNAP_RAY_TEMP_DIR=$dir/w1   # attach to worker 1" \
    >>"$dir/env.sh"
  local pids open
  pids=$(cluster_pids)
  open=$(open_listeners "$pids")
  echo "staging-cluster: Ray at $addr: a head and $workers worker node(s)," \
    "$(wc -w <<<"$pids") processes, ${open:+NOT }every listener on loopback"
  [[ -z $open ]] || echo "$open"

  local url=${database_url:-postgresql://USER:PASSWORD@127.0.0.1/livesnap} note=""
  [[ -n $database_url ]] || note=" (no --database-url given: put yours in)"
  local livesnap="$py -m livesnap"
  [[ -x $(dirname "$py")/livesnap ]] && livesnap=$(dirname "$py")/livesnap
  cat <<EOF

livesnap on it, with the PostgreSQL database $url$note;
the nodes share the local storage in $dir/data:

  . $dir/env.sh    # Ray's address and token, for this shell
  $livesnap cluster up --shards $shards --resource shard --ray-address $addr \\
      --database-url '$url' --data-dir $dir/data
  LIVESNAP_SHARDS=$shards LIVESNAP_STORAGE_FALLBACK=true $livesnap serve --engine ray \\
      --ray-address $addr --database-url '$url' --data-dir $dir/data
  $livesnap cluster status --shards $shards --ray-address $addr

${redis:+The head keeps the cluster's state in Redis at $redis: to see capture go on without
it, $0 kill-head --dir $dir, and after a while
$0 start-head --dir $dir (within 60 s: Ray's nodes give up on the head after that).
}
Afterwards: stop livesnap serve, then
  LIVESNAP_DATABASE_URL='$url' $livesnap cluster down --shards $shards --ray-address $addr
  $0 stop --dir $dir
EOF
}

status() {
  local addr="" pids open
  [[ -f $dir/env.sh ]] && addr=$(sed -n 's/^export LIVESNAP_RAY_ADDRESS=//p' "$dir/env.sh")
  pids=$(cluster_pids)
  if [[ -z $pids ]]; then
    echo "staging-cluster: nothing runs in $dir"
    exit 1
  fi
  open=$(open_listeners "$pids")
  echo "staging-cluster: Ray at ${addr:-?}: $(wc -w <<<"$pids") processes in $dir," \
    "${open:+NOT }every listener on loopback"
  [[ -z $open ]] || echo "$open"
  if [[ -z $(head_pids) ]]; then
    echo "staging-cluster: the head is down (start-head starts a new one)"
  elif [[ -n $addr ]]; then
    ray_env "$py" -m ray.scripts.scripts status --address "$addr"
  fi
}

# The head's processes: this cluster's whose files are under DIR/ray (each worker has its own
# temp directory).
head_pids() {
  local pid
  for pid in $(cluster_pids); do
    if grep -qzF "$dir/ray/" "/proc/$pid/cmdline" 2>/dev/null ||
      [[ -n $(find "/proc/$pid/fd" -maxdepth 1 -lname "$dir/ray/*" -print -quit 2>/dev/null) ]]; then
      echo "$pid"
    fi
  done
}

kill_head() {
  local pids i
  pids=$(head_pids)
  if [[ -z $pids ]]; then
    echo "staging-cluster: no head runs in $dir" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  for i in $(seq 20); do
    [[ -z $(head_pids) ]] && break
    sleep 0.2
  done
  echo "staging-cluster: killed the head's $(wc -w <<<"$pids") processes (SIGKILL)"
}

start_head() {
  if [[ ! -f $dir/head.json ]]; then
    echo "staging-cluster: no cluster was started in $dir" >&2
    exit 1
  fi
  if [[ -n $(head_pids) ]]; then
    echo "staging-cluster: the head runs already (kill-head first)" >&2
    exit 1
  fi
  local out
  out=$(ray_env "$py" - <<'PY'
import json
import os
import sys

from ray.cluster_utils import Cluster

base = os.environ["RAY_TMPDIR"]
with open(f"{base}/head.json") as f:
    head = json.load(f)
redis, namespace = head.pop("redis"), head.pop("namespace")
if not redis:
    sys.exit("the cluster was started without --redis: a new head would not find it")
os.environ.update(RAY_REDIS_ADDRESS=redis, RAY_external_storage_namespace=namespace)
cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args=head)
print(cluster.address)
sys.stdout.flush()
os._exit(0)
PY
  ) || {
    echo "staging-cluster: the new head did not start (logs: $dir/ray/session_latest/logs)" >&2
    exit 1
  }
  echo "staging-cluster: a new head at ${out##*$'\n'}, with the cluster's state from Redis"
}

# The cluster's keys in its Redis (Ray keeps them as RAY<namespace>@…), with redis-cli.
forget_redis_keys() {
  local redis namespace host port
  [[ -f $dir/head.json ]] || return 0
  read -r redis namespace < <("$py" -c 'import json, sys
h = json.load(open(sys.argv[1])); print(h.get("redis") or "-", h.get("namespace") or "-")' \
    "$dir/head.json") || return 0
  [[ $redis != - && $namespace != - ]] || return 0
  if ! command -v redis-cli >/dev/null; then
    echo "staging-cluster: redis-cli not found: the keys RAY$namespace@* stay in $redis" >&2
    return 0
  fi
  host=${redis%:*} port=${redis##*:}
  redis-cli -h "$host" -p "$port" --scan --pattern "RAY$namespace@*" |
    xargs -r redis-cli -h "$host" -p "$port" del >/dev/null || true
}

stop() {
  local pids left="" i
  pids=$(cluster_pids)
  if [[ -n $pids ]]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for i in $(seq 10); do # gcs_server and raylet can take longer than this over SIGTERM
      sleep 0.3
      left=$(cluster_pids)
      [[ -z $left ]] && break
    done
    if [[ -n $left ]]; then
      # shellcheck disable=SC2086
      kill -KILL $left 2>/dev/null || true
      for i in $(seq 20); do
        sleep 0.3
        left=$(cluster_pids)
        [[ -z $left ]] && break
      done
    fi
  fi
  forget_redis_keys
  rm -rf "$dir/ray" "$dir"/w[0-9]* "$dir/auth_token" "$dir/env.sh" "$dir/head.json"
  if [[ -n $left ]]; then
    echo "staging-cluster: still running in $dir:" $left >&2
    exit 1
  fi
  echo "staging-cluster: stopped $(wc -w <<<"$pids") processes in $dir"
}

case $action in
  kill-head) kill_head ;;
  start-head) start_head ;;
  *) "$action" ;;
esac
