#!/bin/bash
# A/B of the batched lifecycle on one shard, interleaved: each round, each variant (a source tree,
# e.g. a `git archive` of a commit) serves on port 0; the same bench client (the first tree's)
# drives it with `shardq bench --scenario lifecycle --server ... --server-pid SHARD`; `perf stat`
# counts the shard process's syscalls meanwhile. One JSON line per run.
#
#   loadtests/ab_lifecycle.sh ROUNDS TASKS name=tree [name=tree ...] > runs.jsonl
#
# Needs perf (raw_syscalls tracepoint) and /work-style paths: PYTHON (default: python3).
set -u
ROUNDS=$1; TASKS=$2; shift 2
PY=${PYTHON:-python3}
CLIENT=${1#*=}
for r in $(seq "$ROUNDS"); do
  for v in "$@"; do
    name=${v%%=*}; tree=${v#*=}
    D=$(mktemp -d)/data; LOG=$D.log; mkdir -p "$D"
    (cd "$tree" && PYTHONPATH=$tree setsid "$PY" -m shardq serve --port 0 --http-port 0 --metrics-port 0 \
        --shards 1 --data-dir "$D" > "$LOG" 2>&1 < /dev/null &)
    for _ in $(seq 100); do grep -q READY "$LOG" 2>/dev/null && break; sleep 0.2; done
    port=$(grep -o 'READY port=[0-9]*' "$LOG" | sed 's/.*=//')
    sup=; shard=
    for _ in $(seq 50); do
      sup=$(pgrep -f "shardq: supervisor .* $D\$" | head -1)
      [ -n "$sup" ] && shard=$(pgrep -P "$sup" -f "shardq: shard-0" | head -1)
      [ -n "$shard" ] && break; sleep 0.2
    done
    perf stat -e raw_syscalls:sys_enter -x, -p "$shard" -o "$D.perf" &
    perf_pid=$!
    res=$(cd "$CLIENT" && PYTHONPATH=$CLIENT timeout 300 "$PY" -m shardq bench --scenario lifecycle \
          --server "shardq://127.0.0.1:$port" --server-pid "$shard" --tasks "$TASKS" --json 2>/dev/null)
    kill -INT $perf_pid; wait $perf_pid 2>/dev/null
    sc=$(grep raw_syscalls "$D.perf" | cut -d, -f1)
    "$PY" -c '
import json, sys
name, r, tasks, sc, res = sys.argv[1:]
row = json.loads(res)["results"][0]
print(json.dumps({"variant": name, "round": int(r), "tasks_per_s": row["completed_per_s"],
                  "server_cpu_us_per_task": row["server_cpu_us_per_task"],
                  "syscalls_per_task": round(int(sc) / int(tasks), 4)}))' "$name" "$r" "$TASKS" "$sc" "$res"
    kill -TERM -- -"$sup" 2>/dev/null; sleep 1.5; kill -KILL -- -"$sup" 2>/dev/null
    rm -rf "$(dirname "$D")"
  done
done
