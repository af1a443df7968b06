#!/usr/bin/env bash
# The same chain on Spin and on the simrelay host, in one run: Ejoin webhooks (every request
# a new SMS) into ejoin, whose events go to smsbower and onlinesim, which share the farm.
#   1. "no activation": the SMS's number has no open activation, so nothing is pushed;
#   2. "pushed": SmsBower sold the number first, so every SMS is also pushed to a mock
#      SmsBower (Python, loopback, answers SUCCESS).
# Each scenario runs `rounds` times, host and Spin alternately, with
# `wrk -t1 -c16 -d<seconds>s --latency` on 127.0.0.1.
# Usage: spin/bench.sh [seconds per run] [rounds]   (after `make build` and `spin build`);
# SPIN=path/to/spin picks the CLI (default: `spin` on PATH, else ../shared/tools/spin/spin);
# SPIN_STORES=memory serves Spin's stores from memory (not durable: a diagnostic of what the
# on-disk store costs, never a configuration to deploy).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
rounds=${2:-2}
spin=${SPIN:-$(command -v spin || echo ../shared/tools/spin/spin)}
spin=$(cd "$(dirname "$spin")" && pwd)/$(basename "$spin")
root=$PWD
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mock_port=18502
host_port=18501
spin_port=18503
key=bench-ejoin-key
bower_key=bench-bower-key
onlinesim_key=bench-onlinesim-key

# A marketplace that accepts every push and answers every query.
python3 - "$mock_port" <<'PY' &
import http.server, sys
class Accept(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"status":"SUCCESS","data":[]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET = answer
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Accept).serve_forever()
PY
pids+=($!)

# The host, wired as spin.toml wires Spin (examples/simrelay.toml's chain).
wasm=$PWD/target/wasm32-wasip2/release
mock=http://127.0.0.1:$mock_port
cat > "$work/simrelay.toml" <<TOML
[instances.ejoin]
plugin = "$wasm/simrelay_ejoin.wasm"
forward_to = ["smsbower", "onlinesim"]
tick_interval_secs = 5
settings = { api_key = "$key" }
[instances.smsbower]
plugin = "$wasm/simrelay_smsbower.wasm"
allow_hosts = ["$mock"]
stores = { inventory = "farm" }
settings = { api_key = "$bower_key", base_url = "$mock", services = ["tg", "wa"] }
[instances.onlinesim]
plugin = "$wasm/simrelay_onlinesim.wasm"
allow_hosts = ["$mock"]
stores = { inventory = "farm" }
settings = { api_key = "$onlinesim_key", push_url = "$mock/push", services = ["tg", "wa"] }
[[routes]]
path = "/api/{key}/webhook"
instance = "ejoin"
[[routes]]
path = "/smsbower"
instance = "smsbower"
TOML
SIMRELAY_LOG=warn ./target/release/simrelay serve --config "$work/simrelay.toml" \
  --listen "127.0.0.1:$host_port" --data-dir "$work/data" &
pids+=($!)

# Spin, with the README's commands.
mkdir -p "$work/spin"
if [ "${SPIN_STORES:-disk}" = memory ]; then
  grep -v '^path' spin/runtime-config.toml > "$work/spin/runtime-config.toml"
else
  cp spin/runtime-config.toml "$work/spin/"
fi
(cd "$work" && \
  SPIN_VARIABLE_EJOIN_API_KEY=$key SPIN_VARIABLE_SMSBOWER_API_KEY=$bower_key \
  SPIN_VARIABLE_SMSBOWER_BASE_URL=$mock SPIN_VARIABLE_SMSBOWER_SERVICES='["tg","wa"]' \
  SPIN_VARIABLE_ONLINESIM_API_KEY=$onlinesim_key SPIN_VARIABLE_ONLINESIM_PUSH_ORIGIN=$mock \
  SPIN_VARIABLE_ONLINESIM_PUSH_PATH=/push \
  exec "$spin" up --from "$root/spin.toml" --runtime-config-file "$work/spin/runtime-config.toml" \
    --state-dir "$work/state" --listen "127.0.0.1:$spin_port" --quiet >"$work/spin.log" 2>&1) &
pids+=($!)

for port in $host_port $spin_port; do
  until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.2; done
done

post() { curl -s -X POST -H 'content-type: application/json' -d "$2" "$1"; }
sim='{"type":"dev-status","mac":"00:1A:2B:3C:4D:5E","status":[{"port":"1.01","sn":"79001234567","iccid":"8970100000000000001","imsi":"250010000000001","st":"3 registered","active":1,"slot_active":1}]}'
for port in $host_port $spin_port; do
  post "http://127.0.0.1:$port/api/$key/webhook" "$sim" >/dev/null
done
sleep 1   # the host hands events on after its answer

run=0
measure() { # name port
  run=$((run + 1))
  local result
  result=$(SMS_BASE=$((1700000000 + run * 10000000)) wrk -t1 -c16 -d"${seconds}s" --latency \
    --timeout 10s -s spin/bench-sms.lua "http://127.0.0.1:$2/api/$key/webhook")
  printf '%-6s %10s req/s   p50 %8s   p99 %8s   %s %s\n' "$1" \
    "$(awk '/Requests\/sec/ { print $2 }' <<<"$result")" \
    "$(awk '$1 == "50%" { print $2 }' <<<"$result")" \
    "$(awk '$1 == "99%" { print $2 }' <<<"$result")" \
    "$(grep -o 'Non-2xx or 3xx responses: [0-9]*' <<<"$result" || true)" \
    "$(grep -o 'Socket errors:.*' <<<"$result" || true)"
}

echo "== no activation: webhook, two downstream instances, no push"
for _ in $(seq "$rounds"); do measure host $host_port; measure spin $spin_port; done

number='{"action":"GET_NUMBER","key":"'$bower_key'","country":"russia","operator":"any","service":"tg","sum":"20.00"}'
for port in $host_port $spin_port; do
  echo "SmsBower sells the number on :$port: $(post "http://127.0.0.1:$port/smsbower" "$number")"
done
echo "== pushed: every SMS also pushed to the mock SmsBower"
for _ in $(seq "$rounds"); do measure host $host_port; measure spin $spin_port; done
