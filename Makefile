# simrelay: `make run` sets up and runs the host with the default plugins; `make test` runs
# every test. Both need only rustup and cargo.

CARGO ?= cargo
PLUGINS := ejoin smsbower onlinesim smsgateway24 gotsms
# Plugins that exist only for the tests.
TEST_PLUGINS := misbehaving legacy-v0-1
WASM_DIR := target/wasm32-wasip2/release
# The Python plugin: componentize-py (from PyPI, into target/python-venv) bundles app.py
# with CPython into a component. Needs python3 with venv and pip.
NOTIFY_WASM := $(WASM_DIR)/simrelay_notify.wasm
CONFIG ?= examples/simrelay.toml

# Local settings (API keys, provider URLs) live in .env, which git ignores.
-include .env
export

.PHONY: build plugins test-plugins notify host run test bench lint wasm-target

build: host plugins spin-bridge

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

plugins: wasm-target
	$(CARGO) build --release --target wasm32-wasip2 $(addprefix -p simrelay-,$(PLUGINS))

# The hot-swap tests need the versioned fixture built once per version, each copied aside.
FIXTURE_VERSIONS := 1 2 3 describe-traps webhook-traps

test-plugins: wasm-target
	$(CARGO) build --release --target wasm32-wasip2 $(addprefix -p simrelay-,$(TEST_PLUGINS))
	for version in $(FIXTURE_VERSIONS); do \
	  SIMRELAY_FIXTURE_VERSION=$$version $(CARGO) build --release --target wasm32-wasip2 -p simrelay-versioned && \
	  cp $(WASM_DIR)/simrelay_versioned.wasm $(WASM_DIR)/simrelay_versioned_$$version.wasm || exit 1; \
	done

notify: $(NOTIFY_WASM)

$(NOTIFY_WASM): plugins/notify/app.py plugins/notify/build.sh $(wildcard wit/*.wit wit/deps/*/*.wit)
	plugins/notify/build.sh

host:
	$(CARGO) build --release -p simrelay

# Fermyon Spin: the bridge component that serves each plugin instance (spin/bridge); `spin
# build` builds it too. `make spin` runs the README's two Spin commands.
SPIN ?= $(shell command -v spin || echo ../shared/tools/spin/spin)
.PHONY: spin-bridge spin lint-spin

spin-bridge: wasm-target
	$(CARGO) build --release --target wasm32-wasip2 -p simrelay-spin-bridge

spin:
	$(SPIN) build
	$(SPIN) up --runtime-config-file spin/runtime-config.toml

lint-spin: wasm-target
	$(CARGO) clippy --release --target wasm32-wasip2 -p simrelay-spin-bridge -- -D warnings

run: build
	./target/release/simrelay serve --config $(CONFIG)

# The tests run every plugin's fixtures (`simrelay plugin test`), notify's included.
test: build test-plugins notify
	$(CARGO) test --release --workspace

# Seconds per load run and rounds of each server; see BENCHMARKS.md.
BENCH_SECONDS ?= 10
BENCH_ROUNDS ?= 2

# Measures everything BENCHMARKS.md reports, in one run, and writes it there.
bench:
	host/benches/bench.sh $(BENCH_SECONDS) $(BENCH_ROUNDS)

# GET_NUMBER latency through the running host, 500 SIMs, 16 callers (BENCHMARKS.md).
.PHONY: bench-get-number
bench-get-number: host plugins
	$(CARGO) bench -p simrelay-e2e --bench get_number

lint: wasm-target lint-spin
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release --target wasm32-wasip2 $(addprefix -p simrelay-,$(PLUGINS) $(TEST_PLUGINS)) -- -D warnings
