#!/usr/bin/env bash
# Two builds of the host on the chain under load (Ejoin → SmsBower → a mock marketplace),
# alternating run by run, so that a noisy machine's drift falls on both. Per run: webhooks
# acknowledged per second, and the host's CPU time and disk writes (/proc/<pid>/stat and
# /proc/<pid>/io) per SMS pushed, with the CPU time of the committer thread and of tokio's
# threads on their own (/proc/<pid>/task/*/stat, by thread name); at a steady rate, also
# webhook → push p50 and p99.
# Usage: host/benches/load/compare.sh BASELINE CANDIDATE [runs, default 3] [seconds, default 10] [rate]
#   BASELINE, CANDIDATE: simrelay binaries, e.g. target/release/simrelay of two commits copied aside;
#   rate: webhooks/s, sent open loop by `chain drive`; without it, full load (wrk -t1 -c16).
# Needs the plugins built (make build), python3, curl; installs wrk (Debian) when missing.
# Disk bytes are the host's write_bytes (/proc/<pid>/io): what it dirtied in the page cache, which
# can be far from what the device wrote (compare /proc/diskstats when that matters).
set -euo pipefail
cd "$(dirname "$0")/../../.."
baseline=$(realpath "$1")
candidate=$(realpath "$2")
runs=${3:-3}
seconds=${4:-10}
rate=${5:-}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

log() { echo "compare: $*" >&2; }
host_port=18322
mock_port=18323
admin_port=18325
source host/benches/load/chain-env.sh
chain=$(chain_tool)
start_mock

cpu_us() { # pid: user + system time so far, µs
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%d", ($14 + $15) * 1000000 / hz }' "/proc/$1/stat"
}
written() { awk '/^write_bytes/ { print $2 }' "/proc/$1/io"; }
threads_us() { # pid: CPU time so far of the committer and of tokio's threads, µs ("committer tokio")
  cat "/proc/$1"/task/*/stat | sed 's/^[0-9]* (\([^)]*\))/\1/' |
    awk -v hz="$(getconf CLK_TCK)" '{ us = ($13 + $14) * 1000000 / hz }
      $1 == "db-committer" { committer += us } $1 == "tokio-rt-worker" { tokio += us }
      END { printf "%d %d", committer, tokio }'
}

run_once() { # label, binary, run number: prints a table row
  start_simrelay "$work/data-$3-$1" "$2"
  curl -s -X POST "http://127.0.0.1:$mock_port/reset" >/dev/null
  local cpu0 disk0 threads0 sent rps
  cpu0=$(cpu_us "$host_pid")
  threads0=$(threads_us "$host_pid")
  disk0=$(written "$host_pid")
  if [ -n "$rate" ]; then
    local driven
    driven=$("$chain" drive "http://127.0.0.1:$host_port/api/$key/webhook" "$rate" "$seconds")
    sent=$(echo "$driven" | json_field acknowledged)
    rps=$rate
  else
    local report
    report=$(wrk -t1 -c16 -d"${seconds}s" -s host/benches/load/unique-sms.lua \
      "http://127.0.0.1:$host_port/api/$key/webhook")
    sent=$(echo "$report" | awk '/requests in/ { print $1 }')
    rps=$(echo "$report" | awk '/Requests\/sec/ { printf "%d", $2 }')
  fi
  wait_pushes "$sent" >/dev/null
  local stats cpu disk threads
  stats=$(mock_stats)
  threads="$threads0 $(threads_us "$host_pid")"
  cpu=$(( $(cpu_us "$host_pid") - cpu0 ))
  disk=$(( $(written "$host_pid") - disk0 ))
  kill "$host_pid"; wait "$host_pid" 2>/dev/null || true
  python3 - "$3" "$1" "$rps" "$cpu" "$disk" "$stats" "$rate" "$threads" <<'PY'
import json, sys
run, label, rps, cpu, disk, stats, rate, threads = sys.argv[1:]
stats = json.loads(stats)
pushed = max(stats["pushes"], 1)
committer0, tokio0, committer1, tokio1 = map(int, threads.split())
latency = (f"{stats['p50_us'] / 1000:.2f} | {stats['p99_us'] / 1000:.2f} | {stats['max_us'] / 1000:.2f}"
           if rate else "– | – | –")
print(f"| {run} | {label} | {int(rps):,} | {stats['pushes']:,} | {int(cpu) // pushed} | "
      f"{(committer1 - committer0) // pushed} | {(tokio1 - tokio0) // pushed} | "
      f"{int(disk) // pushed:,} | {latency} |")
PY
}

load=${rate:+"steady $rate webhooks/s"}
echo "Builds alternating, ${load:-full load (wrk -t1 -c16)}, $seconds s per run:"
echo "baseline: $baseline"
echo "candidate: $candidate"
echo
echo "| run | build | webhooks/s | SMS pushed | host CPU per SMS (µs) | of which committer | tokio threads | disk bytes per SMS | push p50 (ms) | p99 | max |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for run in $(seq "$runs"); do
  run_once baseline "$baseline" "$run"
  run_once candidate "$candidate" "$run"
done
