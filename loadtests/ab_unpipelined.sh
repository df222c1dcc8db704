#!/bin/bash
# A/B of compare.py's unpipelined row, interleaved: each round, each variant (a source tree, e.g.
# a `git archive` of a commit) runs its own compare.py (its client and its server) for the shardq
# row, then the beanstalkd row, so every round has its own ratio. One JSON line per row with the
# server's CPU per acknowledged task and per request (submits + claims + results), and the load
# generator's CPU per acknowledged task.
#
#   loadtests/ab_unpipelined.sh ROUNDS SECONDS name=tree [name=tree ...] > runs.jsonl
#
# PYTHON (default: python3) must have the trees' dependencies, greenstalk and psutil.
set -u
ROUNDS=$1; SECONDS_=$2; shift 2
PY=${PYTHON:-python3}
for r in $(seq "$ROUNDS"); do
  for v in "$@"; do
    name=${v%%=*}; tree=${v#*=}
    (cd "$tree" && PYTHONPATH=$tree timeout 300 "$PY" loadtests/compare.py --seconds "$SECONDS_" \
        --only "unpipelined shardq" "unpipelined beanstalkd" 2>/dev/null) | "$PY" -c '
import json, sys
name, r = sys.argv[1:]
for line in sys.stdin:
    d = json.loads(line)
    a, s = d["acked_per_s"], d["submitted_per_s"]
    print(json.dumps({"variant": name, "round": int(r), "row": d["row"].split()[1], "acked_per_s": a,
                      "submitted_per_s": s, "server_cpu_us_per_ack": d["server_cpu_us_per_ack"],
                      "server_cpu_us_per_request": round(d["server_cpu_us_per_ack"] * a / (s + 2 * a), 1),
                      "client_cpu_us_per_ack": d.get("client_cpu_us_per_ack")}), flush=True)' "$name" "$r"
  done
done
