#!/usr/bin/env bash
# `make bench`: every figure of BENCHMARKS.md's latest run, measured in one run on
# 127.0.0.1, then written into BENCHMARKS.md (between its `make bench` markers):
#   1. one Ejoin `recv-sms` call through the host's wasm sandbox against the same logic
#      called natively (criterion, host/benches/adapter_call.rs), and what the database
#      costs an SMS by how many share a transaction (criterion, host/benches/commit_batch.rs);
#   2. webhooks acknowledged per second by `simrelay serve` (Ejoin → SmsBower, a durable
#      commit before every reply) against `wasmtime serve` answering a hello-world
#      `wasi:http` component (host/benches/hello), both under the same wrk settings;
#   3. SMS pushed end to end (accepted by a mock marketplace) per second during that run,
#      the backlog when wrk stops, and how long it takes to drain;
#   4. webhook-to-push latency, p50 and p99, at a steady half of the peak rate;
#   5. resident memory: idle with the default plugins (examples/simrelay.toml), and after
#      the load;
#   6. hot swap: the time from uploading a plugin to its serving, new (compiled on upload)
#      and precompiled (in DATA_DIR/compiled), and webhooks/s while the Ejoin plugin is
#      swapped every half second against the same run without swaps.
# The two servers run alternately, `rounds` times each, and every round is reported.
# Usage: host/benches/bench.sh [seconds per run, default 10] [rounds, default 2]
# Needs: cargo, python3, curl; installs wrk (Debian) and wasmtime-cli (crates.io, into
# target/wasmtime-cli) when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
rounds=${2:-2}
out=target/bench
mkdir -p "$out"
log() { echo "bench: $*" >&2; }
hello_port=18311
host_port=18312
mock_port=18313
idle_port=18314
admin_port=18315
# The chain under test, its helpers, and a work directory removed on exit with what ran.
source host/benches/load/chain-env.sh

# --- tools and builds -------------------------------------------------------------------
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
wasmtime=$PWD/target/wasmtime-cli/bin/wasmtime
if [ ! -x "$wasmtime" ]; then
  log "installing wasmtime-cli 48.0.8 (wasmtime serve) into target/wasmtime-cli"
  cargo install wasmtime-cli --version 48.0.8 --locked --root target/wasmtime-cli \
    --target-dir target/wasmtime-cli/build --no-default-features \
    --features serve,run,component-model-async,cranelift,pooling-allocator,parallel-compilation
fi
make --no-print-directory build test-plugins >&2
cargo build --release --target wasm32-wasip2 --manifest-path host/benches/hello/Cargo.toml \
  --target-dir target/bench-hello >&2
hello=$PWD/target/bench-hello/wasm32-wasip2/release/simrelay_bench_hello.wasm
simrelay=$PWD/target/release/simrelay

# --- 1. one call: native vs wasm --------------------------------------------------------
log "criterion: one Ejoin call, native and through the sandbox"
cargo bench -p simrelay --bench adapter_call -- --warm-up-time 2 --measurement-time 5 \
  2>&1 | tee "$out/adapter_call.txt" >&2
log "criterion: the database's cost per SMS, by SMS per transaction"
cargo bench -p simrelay --bench commit_batch -- --warm-up-time 1 --measurement-time 4 \
  2>&1 | tee "$out/commit_batch.txt" >&2

# --- helpers ----------------------------------------------------------------------------
rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
wrk_run() { # name, wrk arguments...: writes $out/wrk-NAME.txt
  local name=$1; shift
  wrk -t1 -c16 -d"${seconds}s" --latency "$@" > "$out/wrk-$name.txt"
  cat "$out/wrk-$name.txt" >&2
}

chain=$(chain_tool)
start_mock

# --- 5a. idle memory with the default plugins -------------------------------------------
EJOIN_API_KEY=idle SMSBOWER_API_KEY=idle SMSBOWER_BASE_URL="http://127.0.0.1:$mock_port" \
  ONLINESIM_API_KEY=idle ONLINESIM_PUSH_URL="http://127.0.0.1:$mock_port/push" SIMRELAY_LOG=warn \
  "$simrelay" serve --config examples/simrelay.toml --listen "127.0.0.1:$idle_port" \
  --admin-listen "127.0.0.1:$admin_port" --data-dir "$work/idle" &
idle_pid=$!
pids+=($idle_pid)
wait_http "http://127.0.0.1:$idle_port/"
sleep 3
idle_rss=$(rss_mb $idle_pid)
kill $idle_pid; wait $idle_pid 2>/dev/null || true
log "idle RSS with the default plugins: $idle_rss MB"

results=$out/rounds.jsonl
: > "$results"
for round in $(seq "$rounds"); do
  log "round $round: wasmtime serve, hello world"
  "$wasmtime" serve -Scli --addr "127.0.0.1:$hello_port" "$hello" 2>/dev/null &
  hello_pid=$!
  pids+=($hello_pid)
  wait_http "http://127.0.0.1:$hello_port/"
  wrk_run "hello-$round" "http://127.0.0.1:$hello_port/"
  kill $hello_pid; wait $hello_pid 2>/dev/null || true

  log "round $round: simrelay, Ejoin recv-sms to SmsBower PUSH_SMS"
  start_simrelay "$work/data-$round"
  idle_load_rss=$(rss_mb $host_pid)
  curl -s -X POST "http://127.0.0.1:$mock_port/reset" >/dev/null
  wrk_run "simrelay-$round" -s host/benches/load/unique-sms.lua \
    "http://127.0.0.1:$host_port/api/$key/webhook"
  at_end=$(mock_stats)
  acked=$(awk '/requests in/ { print $1 }' "$out/wrk-simrelay-$round.txt")
  drain=$(wait_pushes "$acked")
  drained=$(mock_stats)
  loaded_rss=$(rss_mb $host_pid)

  peak=$(awk '/Requests\/sec/ { print int($2) }' "$out/wrk-simrelay-$round.txt")
  half=$((peak / 2))
  log "round $round: steady $half webhooks/s (half of $peak) for $seconds s"
  sleep 2
  curl -s -X POST "http://127.0.0.1:$mock_port/reset" >/dev/null
  driven=$("$chain" drive "http://127.0.0.1:$host_port/api/$key/webhook" "$half" "$seconds")
  sent=$(echo "$driven" | json_field acknowledged)
  wait_pushes "$sent" >/dev/null
  latency=$(mock_stats)
  kill $host_pid; wait $host_pid 2>/dev/null || true

  python3 - "$round" "$out" "$seconds" "$acked" "$drain" "$idle_load_rss" "$loaded_rss" \
    "$at_end" "$drained" "$driven" "$latency" >> "$results" <<'PY'
import json, re, sys
round_, out, seconds, acked, drain, idle_rss, loaded_rss, at_end, drained, driven, latency = sys.argv[1:]
def wrk(name):
    text = open(f"{out}/wrk-{name}-{round_}.txt").read()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
    return rate, int(bad.group(1)) if bad else 0, lat
hello, hello_bad, hello_lat = wrk("hello")
acks, acks_bad, acks_lat = wrk("simrelay")
at_end, drained, driven, latency = map(json.loads, (at_end, drained, driven, latency))
print(json.dumps({
    "round": int(round_), "seconds": int(seconds),
    "hello_rps": hello, "hello_non2xx": hello_bad, "hello_latency": hello_lat,
    "acked_rps": acks, "acked": int(acked), "acked_non2xx": acks_bad, "acked_latency": acks_lat,
    # wrk does not count the requests in flight when it stops; their SMS may be pushed.
    "pushed_in_window": at_end["pushes"], "backlog_at_end": max(0, int(acked) - at_end["pushes"]),
    "drain_seconds": int(drain), "pushed_total": drained["pushes"],
    "push_span_s": (drained["last_us"] - drained["first_us"]) / 1e6,
    "idle_rss_mb": float(idle_rss), "loaded_rss_mb": float(loaded_rss),
    "steady": driven, "push_latency": latency,
}))
PY
done

# --- 6. hot swap ------------------------------------------------------------------------
# Variants of the Ejoin plugin that behave the same but hash differently: the component
# with one more custom section.
variant() { # tag: writes $work/ejoin-TAG.wasm
  python3 - "$wasm/simrelay_ejoin.wasm" "$1" "$work/ejoin-$1.wasm" <<'PY'
import sys
src, tag, dst = sys.argv[1:]
def leb(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
name = b"simrelay-bench"
payload = leb(len(name)) + name + tag.encode()
open(dst, "wb").write(open(src, "rb").read() + b"\x00" + leb(len(payload)) + payload)
PY
}
install_ms() { # file: ms from the start of the upload to the answer, when it serves
  curl -sf -o /dev/null -w '%{time_total}' -X POST -H "authorization: Bearer $admin_token" \
    --data-binary @"$1" "http://127.0.0.1:$admin_port/v1/instances/ejoin/plugin" |
    awk '{ printf "%.0f", $1 * 1000 }'
}
for tag in a b c d; do variant $tag; done
log "hot swap: upload to serving"
start_simrelay "$work/swap"
admin_token=$(cat "$work/swap/admin-token")
new_a=$(install_ms "$work/ejoin-a.wasm")
new_b=$(install_ms "$work/ejoin-b.wasm")
pre_a=$(install_ms "$work/ejoin-a.wasm")
pre_b=$(install_ms "$work/ejoin-b.wasm")
wrk_run "no-swap" -s host/benches/load/unique-sms.lua "http://127.0.0.1:$host_port/api/$key/webhook"
kill $host_pid; wait $host_pid 2>/dev/null || true
log "hot swap: webhooks/s while swapping every 0.5 s"
start_simrelay "$work/swapping"
admin_token=$(cat "$work/swapping/admin-token")
for tag in a b c d; do install_ms "$work/ejoin-$tag.wasm" >/dev/null; done
: > "$out/swap-times.txt"
(
  end=$((SECONDS + seconds))
  n=0
  while [ $SECONDS -lt $end ]; do
    install_ms "$work/ejoin-$(echo a b c d | cut -d' ' -f$((n % 4 + 1))).wasm" >> "$out/swap-times.txt"
    echo >> "$out/swap-times.txt"
    n=$((n + 1))
    sleep 0.5
  done
) &
swapper=$!
wrk_run "swap" -s host/benches/load/unique-sms.lua "http://127.0.0.1:$host_port/api/$key/webhook"
wait $swapper
kill $host_pid; wait $host_pid 2>/dev/null || true
python3 - "$out" "$new_a" "$new_b" "$pre_a" "$pre_b" > "$out/swap.json" <<'PY'
import json, re, sys
out, new_a, new_b, pre_a, pre_b = sys.argv[1:]
def wrk(name):
    text = open(f"{out}/wrk-{name}.txt").read()
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else "none",
            "p99": dict(re.findall(r"^\s+(99)%\s+(\S+)", text, re.M)).get("99", "?")}
swaps = [int(line) for line in open(f"{out}/swap-times.txt").read().split() if line.strip()]
print(json.dumps({"new_ms": [int(new_a), int(new_b)], "precompiled_ms": [int(pre_a), int(pre_b)],
                  "no_swap": wrk("no-swap"), "swapping": wrk("swap"), "swaps": len(swaps),
                  "swap_ms": sorted(swaps)}))
PY
cat "$out/swap.json" >&2

# --- report -----------------------------------------------------------------------------
python3 - "$out" "$idle_rss" "$seconds" "$rounds" <<'PY'
import datetime, json, platform, subprocess, sys
out, idle_rss, seconds, rounds = sys.argv[1:]
def median(name):
    """A criterion benchmark's median, in µs: its estimate of the mean, which `time:` prints,
    moves with every pause this shared machine takes."""
    with open(f"target/criterion/{name}/new/estimates.json") as estimates:
        return json.load(estimates)["median"]["point_estimate"] / 1000
call = "ejoin on-webhook, recv-sms sample"
native = median(f"{call}/native")
reused = median(f"{call}/wasm, instance reused (the host's default)")
fresh = median(f"{call}/wasm, fresh instance per call")
def per_sms(batch):
    return median(f"sms_per_transaction/{batch}") / batch
rows = [json.loads(line) for line in open(f"{out}/rounds.jsonl")]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) / 2**20
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
def span(values, fmt="{:,.0f}"):
    values = sorted(values)
    return fmt.format(values[0]) if len(values) == 1 or values[0] == values[-1] else \
        (fmt.format(values[0]) + " – " + fmt.format(values[-1]))
def ms(us): return f"{us / 1000:.2f}"
lines = [
    f"Run {now} on {platform.node()}: {cpu}, {__import__('os').cpu_count()} cores, "
    f"{mem:.0f} GiB, Linux {platform.release()}, {rustc}; commit {commit}{' (with local changes)' if dirty else ''}; "
    f"load average {__import__('os').getloadavg()[1]:.1f} over the last 5 minutes (other work on the machine shows here).",
    f"Command: `make bench` (= `host/benches/bench.sh {seconds} {rounds}`). wrk and the servers "
    "share the same cores; every wrk run is `wrk -t1 -c16 -d{}s` on 127.0.0.1.".format(seconds),
    "",
    "| one Ejoin `recv-sms` call (criterion median) | time | ratio to native |",
    "|---|---|---|",
    f"| native adapter logic (reference) | {native:.2f} µs | 1.0× |",
    f"| wasm, instance reused (the host's default) | {reused:.2f} µs | {reused / native:.1f}× |",
    f"| wasm, fresh instance per call | {fresh:.2f} µs | {fresh / native:.1f}× |",
    "",
    "| the database's share of one SMS (criterion median, `host/benches/commit_batch.rs`: its webhook's and its event's commits, made durable) | 1 SMS per transaction | 16 | 64 | 256 |",
    "|---|---|---|---|---|",
    "| time until durable, per SMS | " + " | ".join(f"{per_sms(b):.0f} µs" for b in (1, 16, 64, 256)) + " |",
    "",
    "| round | `wasmtime serve` hello world (reference) | simrelay webhooks acknowledged | ratio | SMS pushed during the run | backlog at the end | drained in |",
    "|---|---|---|---|---|---|---|",
]
for r in rows:
    pushed_rate = r["pushed_in_window"] / r["seconds"]
    lines.append(
        f"| {r['round']} | {r['hello_rps']:,.0f}/s | {r['acked_rps']:,.0f}/s"
        f"{' (' + str(r['acked_non2xx']) + ' not 2xx)' if r['acked_non2xx'] else ''} | "
        f"{r['acked_rps'] / r['hello_rps']:.2f}× | {pushed_rate:,.0f}/s ({pushed_rate / r['hello_rps']:.2f}×) | "
        f"{r['backlog_at_end']:,} | {r['drain_seconds']} s |")
lines += [
    "",
    "| round | steady load (half of that round's peak) | acknowledged | ack p50 / p99 | webhook → push p50 | p99 | max |",
    "|---|---|---|---|---|---|---|",
]
for r in rows:
    s, l = r["steady"], r["push_latency"]
    rate = s["sent"] / r["seconds"]
    lines.append(
        f"| {r['round']} | {rate:,.0f}/s | {s['acknowledged']:,} of {s['sent']:,} | "
        f"{ms(s['ack_p50_us'])} / {ms(s['ack_p99_us'])} ms | {ms(l['p50_us'])} ms | {ms(l['p99_us'])} ms | {ms(l['max_us'])} ms |")
lines += [
    "",
    f"Resident memory: idle with the default plugins (`examples/simrelay.toml`, three "
    f"instances) {float(idle_rss):.1f} MB; the load configuration after start-up "
    f"{span([r['idle_rss_mb'] for r in rows], '{:.1f}')} MB and after the load "
    f"{span([r['loaded_rss_mb'] for r in rows], '{:.1f}')} MB.",
]
swap = json.load(open(f"{out}/swap.json"))
sw, ns = swap["swapping"], swap["no_swap"]
lines += [
    "",
    "| hot swap of the Ejoin plugin (`POST /v1/instances/ejoin/plugin`, upload to serving) | time |",
    "|---|---|",
    f"| a new plugin (compiled on upload) | {' / '.join(str(v) for v in swap['new_ms'])} ms |",
    f"| a precompiled plugin (in `DATA_DIR/compiled`) | {' / '.join(str(v) for v in swap['precompiled_ms'])} ms |",
    "",
    "| webhooks acknowledged | requests/s | not 2xx | socket errors | p99 |",
    "|---|---|---|---|---|",
    f"| no swap (reference) | {ns['rps']:,.0f} | {ns['non2xx']} | {ns['socket_errors']} | {ns['p99']} |",
    f"| {swap['swaps']} swaps, one every 0.5 s (each {min(swap['swap_ms'], default=0)}–{max(swap['swap_ms'], default=0)} ms) "
    f"| {sw['rps']:,.0f} ({sw['rps'] / ns['rps']:.2f}×) | {sw['non2xx']} | {sw['socket_errors']} | {sw['p99']} |",
]
report = "\n".join(lines) + "\n"
open(f"{out}/report.md", "w").write(report)
path = "BENCHMARKS.md"
doc = open(path).read()
begin, end = "<!-- make bench: begin -->\n", "<!-- make bench: end -->\n"
if begin in doc and end in doc:
    doc = doc[: doc.index(begin) + len(begin)] + report + doc[doc.index(end):]
else:
    doc += "\n" + begin + report + end
open(path, "w").write(doc)
print(report)
PY
