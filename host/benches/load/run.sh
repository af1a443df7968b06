#!/usr/bin/env bash
# Load test of the running host on 127.0.0.1 with wrk (-t1 -c16, as in DEVELOPERS.md):
#   1. an unknown route: HTTP layer only, no plugin (the baseline);
#   2. a plugin call that touches no state: sandboxed call plus a commit with nothing in it;
#   3. the Ejoin recv-sms webhook, every request a new SMS: plugin call, key-value writes,
#      queued events, durable commit (fsync) before the reply.
# Usage: host/benches/load/run.sh [seconds per run]   (after `make build test-plugins`);
# SIMRELAY_BIN=path/to/simrelay measures another build, e.g. a baseline commit.
set -euo pipefail
cd "$(dirname "$0")/../../.."
seconds=${1:-10}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
mock_port=18302
host_port=18301

# A SmsBower that accepts every push.
python3 - "$mock_port" <<'PY' &
import http.server, sys
class Accept(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"status":"SUCCESS"}'
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Accept).serve_forever()
PY

wasm=$PWD/target/wasm32-wasip2/release
cat > "$work/simrelay.toml" <<TOML
[instances.ejoin]
plugin = "$wasm/simrelay_ejoin.wasm"
forward_to = ["smsbower"]
settings = { api_key = "load" }
[instances.smsbower]
plugin = "$wasm/simrelay_smsbower.wasm"
allow_hosts = ["127.0.0.1:$mock_port"]
settings = { api_key = "load", base_url = "http://127.0.0.1:$mock_port" }
[instances.noop]
plugin = "$wasm/simrelay_misbehaving.wasm"
[[routes]]
path = "/api/{key}/webhook"
instance = "ejoin"
[[routes]]
path = "/noop/{how}"
instance = "noop"
TOML
SIMRELAY_LOG=warn "${SIMRELAY_BIN:-./target/release/simrelay}" serve --config "$work/simrelay.toml" \
  --listen "127.0.0.1:$host_port" --data-dir "$work/data" &
host_pid=$!
until curl -s -o /dev/null "http://127.0.0.1:$host_port/"; do sleep 0.1; done
rss() { awk '/VmRSS/ { printf "%.1f MB", $2 / 1024 }' "/proc/$host_pid/status"; }
echo "idle RSS: $(rss)"

run() {
  echo "== $1"
  shift
  wrk -t1 -c16 -d"${seconds}s" "$@" | grep -E "Requests/sec|Latency|Non-2xx"
  echo "RSS after: $(rss)"
}
run "unknown route (404, no plugin)" "http://127.0.0.1:$host_port/nothing"
run "plugin call, no state (noop)" -s host/benches/load/post.lua "http://127.0.0.1:$host_port/noop/behave"
run "ejoin recv-sms, new SMS each time" -s host/benches/load/unique-sms.lua "http://127.0.0.1:$host_port/api/load/webhook"
