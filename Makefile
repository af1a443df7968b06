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

build: host plugins spin-bridge

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

plugins: wasm-target
	$(CARGO) build --release --target wasm32-wasip2 $(addprefix -p simrelay-,$(PLUGINS))

test-plugins: wasm-target
	$(CARGO) build --release --target wasm32-wasip2 $(addprefix -p simrelay-,$(TEST_PLUGINS))

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

test: build test-plugins
	$(CARGO) test --release --workspace

bench: build
	$(CARGO) bench -p simrelay --bench adapter_call

lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release --target wasm32-wasip2 $(addprefix -p simrelay-,$(PLUGINS) $(TEST_PLUGINS)) -- -D warnings
