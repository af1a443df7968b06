# The chain under load (Ejoin → SmsBower → a mock marketplace on 127.0.0.1), shared by
# `host/benches/bench.sh` (make bench) and `host/benches/load/compare.sh`. Sourced from the
# repository's root with `log` and the ports `host_port`, `mock_port`, `admin_port` set.
# Everything started goes in `pids`, and is stopped on exit with `work` removed.

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

key=load
wasm=$PWD/target/wasm32-wasip2/release

wait_http() { # url
  for _ in $(seq 600); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  log "nothing answers at $1"; return 1
}
mock_stats() { curl -s "http://127.0.0.1:$mock_port/stats"; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

# The `chain` tool (host/benches/load/chain.rs: the mock and the steady driver), built.
chain_tool() {
  cargo bench -p simrelay --bench chain --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "chain" and m.get("executable"):
        print(m["executable"])'
}

start_mock() {
  "$chain" mock "127.0.0.1:$mock_port" &
  pids+=($!)
  wait_http "http://127.0.0.1:$mock_port/stats"
}

cat > "$work/simrelay.toml" <<TOML
[instances.ejoin]
plugin = "$wasm/simrelay_ejoin.wasm"
forward_to = ["smsbower"]
tick_interval_secs = 5
settings = { api_key = "$key" }

[instances.smsbower]
plugin = "$wasm/simrelay_smsbower.wasm"
allow_hosts = ["127.0.0.1:$mock_port"]
stores = { inventory = "farm" }
retry = { schedule = "fixed", interval_secs = 1, jitter = 0.0 }
settings = { api_key = "$key", base_url = "http://127.0.0.1:$mock_port", retry_interval_secs = "1", services = ["tg"] }

[[routes]]
path = "/api/{key}/webhook"
method = "POST"
instance = "ejoin"

[[routes]]
path = "/smsbower"
method = "POST"
instance = "smsbower"
TOML

start_simrelay() { # data dir [binary, default target/release/simrelay]: sets host_pid
  SIMRELAY_LOG=warn "${2:-$PWD/target/release/simrelay}" serve --config "$work/simrelay.toml" \
    --listen "127.0.0.1:$host_port" --admin-listen "127.0.0.1:$admin_port" --data-dir "$1" &
  host_pid=$!
  pids+=($host_pid)
  wait_http "http://127.0.0.1:$host_port/"
  # SmsBower pushes only SMS on a number it sold: register the SIM, open an activation.
  curl -sf -X POST "http://127.0.0.1:$host_port/api/$key/webhook" -H 'content-type: application/json' \
    -d '{"type":"dev-status","mac":"00:1A:2B:3C:4D:5E","status":[{"port":"1.01","sn":"79001234567","iccid":"8970100000000000001","imsi":"250010000000001","st":"3 registered","active":1,"slot_active":1,"opr":"MTS","sig":25}]}' >/dev/null
  for _ in $(seq 100); do
    if curl -s -X POST "http://127.0.0.1:$host_port/smsbower" -H 'content-type: application/json' \
      -d "{\"action\":\"GET_NUMBER\",\"key\":\"$key\",\"country\":\"russia\",\"operator\":\"any\",\"service\":\"tg\",\"sum\":\"20.00\"}" |
      grep -q SUCCESS; then return 0; fi
    sleep 0.1
  done
  log "no activation could be opened"; return 1
}

wait_pushes() { # count: waits (up to 120 s) until the mock has that many; prints seconds waited
  local began=$SECONDS
  for _ in $(seq 1200); do
    [ "$(mock_stats | json_field pushes)" -ge "$1" ] && break
    sleep 0.1
  done
  echo $((SECONDS - began))
}
