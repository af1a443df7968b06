# simrelay: `make run` sets up and runs the host with the default plugins; `make test` runs
# every test. Both need only rustup and cargo.

CARGO ?= cargo
PLUGINS := ejoin smsbower onlinesim smsgateway24 gotsms
# Plugins that exist only for the tests.
TEST_PLUGINS := misbehaving
WASM_DIR := target/wasm32-wasip2/release
CONFIG ?= examples/simrelay.toml

# Local settings (API keys, provider URLs) live in .env, which git ignores.
-include .env
export

.PHONY: build plugins test-plugins host run test bench lint wasm-target

build: host plugins

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

plugins: wasm-target
	$(CARGO) build --release --target wasm32-wasip2 $(addprefix -p simrelay-,$(PLUGINS))

test-plugins: wasm-target
	$(CARGO) build --release --target wasm32-wasip2 $(addprefix -p simrelay-,$(TEST_PLUGINS))

host:
	$(CARGO) build --release -p simrelay

run: build
	./target/release/simrelay serve --config $(CONFIG)

test: build test-plugins
	$(CARGO) test --release --workspace

# Seconds per load run and rounds of each server; see BENCHMARKS.md.
BENCH_SECONDS ?= 10
BENCH_ROUNDS ?= 2

# Measures everything BENCHMARKS.md reports, in one run, and writes it there.
bench:
	host/benches/bench.sh $(BENCH_SECONDS) $(BENCH_ROUNDS)

lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release --target wasm32-wasip2 $(addprefix -p simrelay-,$(PLUGINS) $(TEST_PLUGINS)) -- -D warnings
