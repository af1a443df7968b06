//! The wasm runtime: loads plugin components and runs each call in its own sandbox.
//!
//! Every call gets a fresh instance with a CPU deadline (epoch interruption), a memory cap,
//! no files, sockets or environment, and captured stdout/stderr. A plugin that traps,
//! loops or exhausts memory fails that call only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable, types::ComponentItem};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, Trap,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::abi::{self, AdapterPre, Input, Output};
use crate::config::Limits;
use crate::kv::{self, KvOverlay};
use crate::model::{CallContext, Descriptor};

/// How often the deadline clock ticks; call deadlines are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Bytes of stdout and of stderr kept from one call.
const OUTPUT_CAPACITY: usize = 64 * 1024;

/// What one call's store holds.
pub struct CallState {
    kv: KvOverlay,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The compiler and linker shared by every plugin.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
}

/// A plugin component, compiled, linked and described.
pub struct LoadedPlugin {
    pub descriptor: Descriptor,
    pre: AdapterPre,
}

impl LoadedPlugin {
    /// The interface version the plugin speaks.
    pub fn interface_version(&self) -> &'static str {
        self.pre.version()
    }
}

/// Why a call produced nothing.
#[derive(Debug)]
pub enum CallError {
    /// The plugin returned an error of its own.
    Plugin(String),
    /// The plugin trapped (a panic, an abort) or broke the interface.
    Trap(String),
    /// The plugin ran past its CPU deadline.
    Deadline(String),
    /// The plugin tried to grow its memory past its cap.
    OutOfMemory(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Plugin(message) => write!(f, "plugin error: {message}"),
            CallError::Trap(message)
            | CallError::Deadline(message)
            | CallError::OutOfMemory(message) => write!(f, "plugin crashed: {message}"),
        }
    }
}

/// One finished call: its result, the key-value writes it made and what it printed.
pub struct CallRecord<R> {
    pub result: Result<R, CallError>,
    pub kv: KvOverlay,
    pub output: String,
}

impl Runtime {
    pub fn new() -> Result<Arc<Self>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Every call instantiates afresh; pooled slots make that a reuse, not an mmap.
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(
            PoolingAllocationConfig::default(),
        ));
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        kv::bindings::Imports::add_to_linker::<_, HasSelf<KvOverlay>>(&mut linker, |state| {
            &mut state.kv
        })
        .map_err(anyhow::Error::from)?;

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Arc::new(Runtime { engine, linker }))
    }

    /// Compiles, links and describes a plugin; any failure leaves nothing loaded.
    pub fn load(&self, path: &Path, limits: &Limits) -> Result<LoadedPlugin> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read plugin {}", path.display()))?;
        self.load_bytes(&bytes, limits)
            .with_context(|| format!("plugin {}", path.display()))
    }

    /// Compiles, links and describes a plugin component given as bytes.
    pub fn load_bytes(&self, bytes: &[u8], limits: &Limits) -> Result<LoadedPlugin> {
        let component = Component::new(&self.engine, bytes)
            .map_err(anyhow::Error::from)
            .context("it is not a valid WebAssembly component")?;
        let version = self.interface_version(&component)?;
        let pre = AdapterPre::new(&self.linker, &component, version)
            .map_err(anyhow::Error::from)
            .context("it needs imports simrelay does not grant")?;
        let described = self.run(&pre, KvOverlay::detached(), limits, |adapter, store| {
            adapter.describe(store).map(Ok)
        });
        let descriptor = described
            .result
            .map_err(|error| anyhow::anyhow!("{error}"))
            .context("it failed to describe itself")?;
        Ok(LoadedPlugin { descriptor, pre })
    }

    /// The interface version the plugin was built for; an error names a version this host
    /// does not speak.
    fn interface_version(&self, component: &Component) -> Result<&'static str> {
        let ty = component.component_type();
        let prefix = format!("{}@", abi::ADAPTER_INTERFACE);
        let versions: Vec<String> = ty
            .exports(&self.engine)
            .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
            .filter_map(|(name, _)| name.strip_prefix(&prefix).map(str::to_string))
            .collect();
        if let Some(version) = abi::SUPPORTED_VERSIONS
            .iter()
            .find(|supported| versions.iter().any(|v| v == *supported))
        {
            return Ok(version);
        }
        let speaks = abi::SUPPORTED_VERSIONS.join(", ");
        match versions.first() {
            Some(version) => {
                bail!("it was built for simrelay:adapter@{version}; this host speaks {speaks}")
            }
            None => bail!(
                "it is not a simrelay plugin: it exports no `{}` interface",
                abi::ADAPTER_INTERFACE
            ),
        }
    }

    /// Hands `input` to a fresh, sandboxed instance of `plugin`.
    pub fn call(
        &self,
        plugin: &LoadedPlugin,
        kv: KvOverlay,
        limits: &Limits,
        ctx: &CallContext,
        input: Input<'_>,
    ) -> CallRecord<Output> {
        self.run(&plugin.pre, kv, limits, |adapter, store| {
            adapter.call(store, ctx, input)
        })
    }

    fn run<R>(
        &self,
        pre: &AdapterPre,
        kv: KvOverlay,
        limits: &Limits,
        call: impl FnOnce(&abi::Adapter, &mut Store<CallState>) -> wasmtime::Result<Result<R, String>>,
    ) -> CallRecord<R> {
        let stdout = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let state = CallState {
            kv,
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_mb << 20)
                .trap_on_grow_failure(true)
                .build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        let ticks = limits.timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64);
        store.set_epoch_deadline(ticks.max(1) + 1);

        let outcome = pre
            .instantiate(&mut store)
            .and_then(|bindings| call(&bindings, &mut store));
        let result = match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(CallError::Plugin(message)),
            Err(error) => Err(describe_trap(&error, limits)),
        };
        let mut output = String::from_utf8_lossy(&stdout.contents()).into_owned();
        output.push_str(&String::from_utf8_lossy(&stderr.contents()));
        CallRecord {
            result,
            kv: store.into_data().kv,
            output,
        }
    }
}

/// A short account of why a call trapped; the full wasm backtrace goes to the debug log.
fn describe_trap(error: &wasmtime::Error, limits: &Limits) -> CallError {
    let detail = format!("{error:?}");
    tracing::debug!("plugin trapped: {detail}");
    if detail.contains("forcing trap when growing memory") {
        return CallError::OutOfMemory(format!(
            "exceeded its memory limit of {} MiB",
            limits.memory_mb
        ));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Deadline(format!(
            "exceeded its CPU deadline of {} ms",
            limits.timeout_ms
        )),
        Some(Trap::UnreachableCodeReached) => {
            CallError::Trap("panicked or aborted (its output is in the log)".to_string())
        }
        Some(trap) => CallError::Trap(format!("wasm trap: {trap}")),
        None => CallError::Trap(format!("{error:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_error(component_wat: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.wat");
        std::fs::write(&path, component_wat).unwrap();
        let runtime = Runtime::new().unwrap();
        match runtime.load(&path, &Limits::default()) {
            Ok(_) => panic!("the component must be refused"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn refuses_a_plugin_built_for_another_interface_version() {
        let error = load_error(
            r#"(component
                (instance $adapter)
                (export "simrelay:adapter/adapter@0.9.0" (instance $adapter)))"#,
        );
        assert!(
            error
                .contains("it was built for simrelay:adapter@0.9.0; this host speaks 0.2.0, 0.1.0"),
            "{error}"
        );
    }

    #[test]
    fn refuses_a_component_that_is_no_plugin() {
        let error = load_error("(component)");
        assert!(
            error.contains(
                "it is not a simrelay plugin: it exports no `simrelay:adapter/adapter` interface"
            ),
            "{error}"
        );
    }
}
