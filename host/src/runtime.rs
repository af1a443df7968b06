//! The wasm runtime: loads plugin components and runs each call in a sandbox.
//!
//! Every call runs with a CPU deadline (epoch interruption), a memory cap, no files,
//! sockets or environment, and captured stdout/stderr. A plugin that traps, loops or
//! exhausts memory fails that call only.
//!
//! Instantiating a component costs far more than a typical call, so an instance serves up
//! to [`Limits::calls_per_instance`] calls of the same configured instance before it is
//! replaced. Between calls it keeps only its linear memory (plugin state that matters lives
//! in the key-value store, which is swapped in per call). An instance is never shared:
//! the warm instances of a [`LoadedPlugin`] are kept per configured instance name, so two
//! instances of one plugin never see each other's memory, and a new plugin version (a new
//! `LoadedPlugin`) always starts from fresh instances. An instance that trapped, ran past
//! its deadline, hit its memory cap or returned an error is dropped, never used again.
//!
//! Compiled components can be cached on disk ([`Runtime::with_cache`]), keyed by the
//! component's SHA-256 and the engine's compatibility hash, so a restart or a rollback
//! does not compile again.

use std::collections::HashMap;
use std::hash::Hasher;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable, types::ComponentItem};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap, UpdateDeadline,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::abi::{self, Adapter, AdapterPre, Input, Output};
use crate::config::Limits;
use crate::kv::{self, KvOverlay};
use crate::model::{CallContext, Descriptor};
use crate::worker::IoTable;

/// How often the deadline clock ticks; call deadlines are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Bytes of stdout and of stderr kept from one call; the rest is dropped.
const OUTPUT_CAPACITY: usize = 64 * 1024;

/// What an instance's store holds. The key-value overlay is the current call's.
pub struct CallState {
    kv: KvOverlay,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryCap,
    /// Epoch ticks the call may still run before it is interrupted.
    ticks_left: u64,
    /// Epoch ticks seen since the call began.
    ticks_seen: u64,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps an instance's linear memory and remembers how large it got.
struct MemoryCap {
    cap: usize,
    /// The largest memory the instance asked for and got.
    size: usize,
    /// Set when the instance asked for more than its cap (and trapped).
    exceeded: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.exceeded = true;
            wasmtime::bail!("forcing trap when growing memory to {desired} bytes");
        }
        self.size = self.size.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// An instance's stdout or stderr: what the current call printed, up to
/// [`OUTPUT_CAPACITY`]. The guest may keep its stream handle between calls, so the buffer
/// is shared with every stream made from it and emptied after each call.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn buffer(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.buffer();
        let room = OUTPUT_CAPACITY.saturating_sub(buffer.len());
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.buffer())
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: what does not fit is dropped rather than blocking the guest.
        Ok(OUTPUT_CAPACITY)
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One sandboxed instance of a plugin and the calls it has served.
struct Sandbox {
    store: Store<CallState>,
    /// `None` until the first call instantiates it, under that call's deadline and cap.
    adapter: Option<Adapter>,
    stdout: Capture,
    stderr: Capture,
    calls: u32,
}

impl Sandbox {
    fn new(engine: &Engine) -> Self {
        let (stdout, stderr) = (Capture::default(), Capture::default());
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let state = CallState {
            kv: KvOverlay::detached(),
            wasi,
            table: ResourceTable::new(),
            limits: MemoryCap {
                cap: 0,
                size: 0,
                exceeded: false,
            },
            ticks_left: 0,
            ticks_seen: 0,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut store| {
            let state = store.data_mut();
            let Some(left) = state.ticks_left.checked_sub(1) else {
                return Ok(UpdateDeadline::Interrupt);
            };
            state.ticks_left = left;
            state.ticks_seen += 1;
            // The first tick may come just after the call began; the second means it has
            // run a whole tick, far past the usual tens of microseconds.
            if state.ticks_seen == 2 {
                crate::worker::hand_on();
            }
            Ok(UpdateDeadline::Continue(1))
        });
        Sandbox {
            store,
            adapter: None,
            stdout,
            stderr,
            calls: 0,
        }
    }

    /// Whether it may serve another call under `limits`: it has calls left, and its
    /// memory is at most half its cap, so a leak is dropped before it fails a call.
    fn reusable(&self, limits: &Limits) -> bool {
        let memory = &self.store.data().limits;
        self.calls < limits.calls_per_instance && memory.size <= memory.cap / 2
    }
}

/// The compiler and linker shared by every plugin.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    /// Where compiled components are kept, when they are.
    cache: Option<PathBuf>,
    /// Hex digest of the engine's compatibility hash: compiled code from another engine
    /// configuration or wasmtime version never matches it.
    engine_hash: String,
}

/// A plugin component, compiled, linked and described.
pub struct LoadedPlugin {
    pub descriptor: Descriptor,
    pre: AdapterPre,
    sha256: String,
    /// Instances between calls, by configured instance name.
    warm: Mutex<HashMap<String, Sandbox>>,
}

impl LoadedPlugin {
    /// The interface version the plugin speaks.
    pub fn interface_version(&self) -> &'static str {
        self.pre.version()
    }

    /// The SHA-256 of the component's bytes, in lower-case hex.
    pub fn content_hash(&self) -> &str {
        &self.sha256
    }

    fn take_warm(&self, instance: &str) -> Option<Sandbox> {
        self.warm
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(instance)
    }

    fn put_warm(&self, instance: &str, sandbox: Sandbox) {
        let mut warm = self
            .warm
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // Calls of one instance are serial, so there is rarely a second one to keep.
        if !warm.contains_key(instance) {
            warm.insert(instance.to_string(), sandbox);
        }
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

/// Feeds a `Hash` into SHA-256, for a digest that is stable across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("only the digest is read")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Marks a compiled-component file this host wrote: the magic, then the component's
/// SHA-256, the engine hash (as 64 hex digits), the payload's SHA-256, then the payload
/// (`Component::serialize`).
const CACHE_MAGIC: &[u8; 16] = b"simrelay-cwasm1\n";
const CACHE_HEADER: usize = CACHE_MAGIC.len() + 32 + 64 + 32;

impl Runtime {
    /// A runtime that compiles every plugin it loads.
    pub fn new() -> Result<Arc<Self>> {
        Self::build(None)
    }

    /// A runtime that keeps compiled plugins in `data_dir/compiled/`, named by content
    /// hash and engine hash, and loads them from there instead of compiling again.
    pub fn with_cache(data_dir: &Path) -> Result<Arc<Self>> {
        Self::build(Some(data_dir.join("compiled")))
    }

    fn build(cache: Option<PathBuf>) -> Result<Arc<Self>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // `SIMRELAY_PERF_MAP=1` names plugin functions in /tmp/perf-<pid>.map, for `perf`.
        if std::env::var_os("SIMRELAY_PERF_MAP").is_some_and(|value| value == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        // A new instance takes a pooled slot, already mapped, with the plugin's memory
        // image mapped copy-on-write (`memory_init_cow`, on by default).
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(
            PoolingAllocationConfig::default(),
        ));
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        crate::worker::add_io_to_linker(&mut linker, |state| IoTable(&mut state.table))
            .map_err(anyhow::Error::from)?;
        kv::bindings::Imports::add_to_linker::<_, HasSelf<KvOverlay>>(&mut linker, |state| {
            &mut state.kv
        })
        .map_err(anyhow::Error::from)?;

        let mut hasher = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine_hash = hex(&hasher.0.finalize());

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
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache,
            engine_hash,
        }))
    }

    /// Compiles, links and describes the plugin at `path`; any failure leaves nothing
    /// loaded.
    pub fn load(&self, path: &Path, limits: &Limits) -> Result<LoadedPlugin> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read plugin {}", path.display()))?;
        self.load_bytes(&bytes, limits)
            .with_context(|| format!("plugin {}", path.display()))
    }

    /// Compiles (or takes from the cache), links and describes a plugin component given
    /// as bytes; any failure leaves nothing loaded.
    pub fn load_bytes(&self, bytes: &[u8], limits: &Limits) -> Result<LoadedPlugin> {
        let sha256 = hex(&Sha256::digest(bytes));
        let component = self
            .compile(bytes, &sha256)
            .context("it is not a valid WebAssembly component")?;
        let version = self.interface_version(&component)?;
        let pre = AdapterPre::new(&self.linker, &component, version)
            .map_err(anyhow::Error::from)
            .context("it needs imports simrelay does not grant")?;
        let (described, _) = self.run(
            &pre,
            Sandbox::new(&self.engine),
            KvOverlay::detached(),
            limits,
            |adapter, store| adapter.describe(store).map(Ok),
        );
        let descriptor = described
            .result
            .map_err(|error| anyhow::anyhow!("{error}"))
            .context("it failed to describe itself")?;
        Ok(LoadedPlugin {
            descriptor,
            pre,
            sha256,
            warm: Mutex::default(),
        })
    }

    /// The compiled component: from the cache when it holds this component compiled by
    /// this engine, else compiled now (and cached).
    fn compile(&self, bytes: &[u8], sha256: &str) -> Result<Component> {
        let Some(dir) = &self.cache else {
            return Component::new(&self.engine, bytes).map_err(anyhow::Error::from);
        };
        let path = dir.join(format!("{sha256}-{}.cwasm", &self.engine_hash[..16]));
        if let Ok(file) = std::fs::read(&path) {
            match self.cached(&file, sha256) {
                Ok(component) => return Ok(component),
                Err(error) => tracing::warn!(
                    "compiling {} again: the cached copy is unusable: {error:#}",
                    path.display()
                ),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(anyhow::Error::from)?;
        if let Err(error) = self.write_cache(dir, &path, sha256, &component) {
            tracing::warn!("cannot cache the compiled plugin: {error:#}");
        }
        Ok(component)
    }

    /// A compiled component from a cache file, only if its header says this host wrote it
    /// for `sha256` and this engine, and its payload is intact.
    fn cached(&self, file: &[u8], sha256: &str) -> Result<Component> {
        if file.len() < CACHE_HEADER || &file[..CACHE_MAGIC.len()] != CACHE_MAGIC {
            bail!("not a simrelay cache file");
        }
        let (header, payload) = file.split_at(CACHE_HEADER);
        let header = &header[CACHE_MAGIC.len()..];
        if hex(&header[..32]) != sha256 {
            bail!("it holds another component");
        }
        if &header[32..96] != self.engine_hash.as_bytes() {
            bail!("it was compiled by another engine");
        }
        if header[96..] != Sha256::digest(payload)[..] {
            bail!("it is corrupt");
        }
        // SAFETY: `deserialize` trusts its input to be code Wasmtime compiled. The header
        // proves the file was written by `write_cache` for this component and this engine,
        // and the checksum that it arrived whole: truncated, corrupt or foreign files
        // never get here. The data directory is the host's own (it trusts its database
        // the same way).
        unsafe { Component::deserialize(&self.engine, payload) }.map_err(anyhow::Error::from)
    }

    fn write_cache(
        &self,
        dir: &Path,
        path: &Path,
        sha256: &str,
        component: &Component,
    ) -> Result<()> {
        let payload = component.serialize().map_err(anyhow::Error::from)?;
        std::fs::create_dir_all(dir)?;
        let partial = path.with_extension(format!("{}.partial", std::process::id()));
        let mut file = std::fs::File::create(&partial)?;
        let digest = Sha256::digest(&payload);
        let source: Vec<u8> = (0..32)
            .map(|at| u8::from_str_radix(&sha256[at * 2..at * 2 + 2], 16))
            .collect::<Result<_, _>>()?;
        file.write_all(CACHE_MAGIC)?;
        file.write_all(&source)?;
        file.write_all(self.engine_hash.as_bytes())?;
        file.write_all(&digest)?;
        file.write_all(&payload)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        Ok(())
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

    /// Hands `input` to a sandboxed instance of `plugin` kept for `ctx.instance`, or to a
    /// fresh one.
    pub fn call(
        &self,
        plugin: &LoadedPlugin,
        kv: KvOverlay,
        limits: &Limits,
        ctx: &CallContext,
        input: Input<'_>,
    ) -> CallRecord<Output> {
        let sandbox = plugin
            .take_warm(&ctx.instance)
            .unwrap_or_else(|| Sandbox::new(&self.engine));
        let (record, sandbox) = self.run(&plugin.pre, sandbox, kv, limits, |adapter, store| {
            adapter.call(store, ctx, input)
        });
        if let Some(sandbox) = sandbox {
            plugin.put_warm(&ctx.instance, sandbox);
        }
        record
    }

    /// Runs one call in `sandbox`; returns the sandbox too when it may serve again.
    fn run<R>(
        &self,
        pre: &AdapterPre,
        mut sandbox: Sandbox,
        kv: KvOverlay,
        limits: &Limits,
        call: impl FnOnce(&Adapter, &mut Store<CallState>) -> wasmtime::Result<Result<R, String>>,
    ) -> (CallRecord<R>, Option<Sandbox>) {
        let state = sandbox.store.data_mut();
        state.kv = kv;
        state.limits.cap = limits.memory_mb << 20;
        let ticks = limits.timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64);
        state.ticks_left = ticks.max(1);
        state.ticks_seen = 0;
        sandbox.store.set_epoch_deadline(1);

        let adapter = match sandbox.adapter.take() {
            Some(adapter) => Ok(adapter),
            None => pre.instantiate(&mut sandbox.store),
        };
        let outcome = adapter.and_then(|adapter| {
            let outcome = call(&adapter, &mut sandbox.store);
            sandbox.adapter = Some(adapter);
            outcome
        });
        sandbox.calls += 1;
        let result = match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(CallError::Plugin(message)),
            Err(error) => Err(describe_trap(
                &error,
                sandbox.store.data().limits.exceeded,
                limits,
            )),
        };
        let mut output = String::from_utf8_lossy(&sandbox.stdout.take()).into_owned();
        output.push_str(&String::from_utf8_lossy(&sandbox.stderr.take()));
        let kv = std::mem::replace(&mut sandbox.store.data_mut().kv, KvOverlay::detached());
        let reuse = result.is_ok() && sandbox.reusable(limits);
        let record = CallRecord { result, kv, output };
        (record, reuse.then_some(sandbox))
    }
}

/// A short account of why a call trapped; the full wasm backtrace goes to the debug log.
fn describe_trap(error: &wasmtime::Error, exceeded_memory: bool, limits: &Limits) -> CallError {
    tracing::debug!("plugin trapped: {error:?}");
    if exceeded_memory {
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
    use crate::db::Db;
    use crate::kv::StoreState;
    use crate::model::HttpRequest;

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

    /// The one file in the cache directory, and its inode (a rewrite makes a new one).
    fn cache_file(dir: &Path) -> (PathBuf, u64) {
        use std::os::unix::fs::MetadataExt as _;
        let files: Vec<PathBuf> = std::fs::read_dir(dir.join("compiled"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let inode = std::fs::metadata(&files[0]).unwrap().ino();
        (files[0].clone(), inode)
    }

    #[test]
    fn compiled_components_are_cached_by_content_and_engine_and_checked_before_use() {
        let data = tempfile::tempdir().unwrap();
        let runtime = Runtime::with_cache(data.path()).unwrap();
        let component = b"(component)";
        let refused = |runtime: &Runtime| match runtime.load_bytes(component, &Limits::default()) {
            Ok(_) => panic!("no plugin"),
            Err(error) => format!("{error:#}"),
        };
        assert!(refused(&runtime).contains("it is not a simrelay plugin"));
        let (path, written) = cache_file(data.path());
        let name = path.file_name().unwrap().to_str().unwrap();
        let sha256 = hex(&Sha256::digest(component));
        assert_eq!(
            name,
            format!("{sha256}-{}.cwasm", &runtime.engine_hash[..16])
        );

        // Another runtime (a restart) takes it from the cache: the file stays as it was.
        let restarted = Runtime::with_cache(data.path()).unwrap();
        assert!(refused(&restarted).contains("it is not a simrelay plugin"));
        assert_eq!(cache_file(data.path()).1, written, "a hit rewrites nothing");

        // A corrupt copy is never deserialized: it is compiled and written again.
        let mut file = std::fs::read(&path).unwrap();
        let last = file.len() - 1;
        file[last] ^= 0xff;
        std::fs::write(&path, &file).unwrap();
        let corrupt = cache_file(data.path()).1;
        assert!(refused(&restarted).contains("it is not a simrelay plugin"));
        let (_, rewritten) = cache_file(data.path());
        assert_ne!(rewritten, corrupt, "the corrupt copy was replaced");
        assert!(
            restarted
                .cached(&std::fs::read(&path).unwrap(), &sha256)
                .is_ok()
        );

        // So is a file of the right name that this host did not write, or that holds
        // another component.
        assert!(restarted.cached(b"\x7fELF not ours", &sha256).is_err());
        let other = hex(&Sha256::digest(b"(component (core module))"));
        assert!(
            restarted
                .cached(&std::fs::read(&path).unwrap(), &other)
                .is_err()
        );
    }

    /// The test plugin `misbehaving`, built by `make test-plugins`.
    fn misbehaving() -> Vec<u8> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let path = target.join("wasm32-wasip2/release/simrelay_misbehaving.wasm");
        std::fs::read(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error}; build it first with `make test-plugins`",
                path.display()
            )
        })
    }

    struct Harness {
        _data: tempfile::TempDir,
        db: Arc<Db>,
        runtime: Arc<Runtime>,
    }

    impl Harness {
        fn new() -> Self {
            let data = tempfile::tempdir().unwrap();
            Harness {
                db: Arc::new(Db::open(data.path()).unwrap()),
                _data: data,
                runtime: Runtime::new().unwrap(),
            }
        }

        /// `how` as the misbehaving plugin's instance `instance`: its reply's body, or
        /// the error.
        fn ask(
            &self,
            plugin: &LoadedPlugin,
            limits: &Limits,
            instance: &str,
            how: &str,
            body: &str,
        ) -> Result<String, String> {
            let ctx = CallContext {
                instance: instance.into(),
                settings: Vec::new(),
                store: instance.into(),
                shared_stores: Vec::new(),
                message_id: "test".into(),
                now_ms: 0,
            };
            let request = HttpRequest {
                method: "POST".into(),
                path: format!("/{how}"),
                body: body.as_bytes().to_vec(),
                ..Default::default()
            };
            let kv = KvOverlay::new(self.db.clone(), &[StoreState::new(instance)]);
            let record = self
                .runtime
                .call(plugin, kv, limits, &ctx, Input::Webhook(&request));
            match record.result {
                Ok(Output::Webhook(outcome)) => Ok(String::from_utf8(outcome.reply.body).unwrap()),
                Ok(other) => panic!("a webhook call answered {other:?}"),
                Err(error) => Err(error.to_string()),
            }
        }
    }

    fn recalled(text: &str) -> Result<String, String> {
        Ok(format!(r#"{{"message":"{text}"}}"#))
    }

    #[test]
    fn an_instance_serves_only_its_own_calls_and_dies_with_its_first_failure() {
        let harness = Harness::new();
        let bytes = misbehaving();
        let limits = Limits::default();
        let plugin = harness.runtime.load_bytes(&bytes, &limits).unwrap();
        assert_eq!(plugin.content_hash(), hex(&Sha256::digest(&bytes)));
        assert_eq!(plugin.content_hash().len(), 64);
        let ask = |instance: &str, how: &str, body: &str| {
            harness.ask(&plugin, &limits, instance, how, body)
        };

        ask("alice", "remember", "kept in memory").unwrap();
        assert_eq!(ask("alice", "recall", ""), recalled("kept in memory"));
        assert_eq!(ask("bob", "recall", ""), recalled(""), "bob has his own");

        // A plugin error, a trap, a deadline, the memory cap: the next call is fresh.
        for failure in ["leak", "trap", "oom"] {
            ask("alice", "remember", "kept in memory").unwrap();
            assert!(ask("alice", failure, "").is_err());
            assert_eq!(ask("alice", "recall", ""), recalled(""), "after {failure}");
        }
        let quick = Limits {
            timeout_ms: 20,
            ..Limits::default()
        };
        harness
            .ask(&plugin, &quick, "alice", "remember", "kept")
            .unwrap();
        let late = harness
            .ask(&plugin, &quick, "alice", "loop", "")
            .unwrap_err();
        assert!(late.contains("CPU deadline"), "{late}");
        assert_eq!(ask("alice", "recall", ""), recalled(""));

        // A new version of the plugin (a new `LoadedPlugin`) starts from fresh instances.
        ask("alice", "remember", "from the old version").unwrap();
        let upgraded = harness.runtime.load_bytes(&bytes, &limits).unwrap();
        assert_eq!(
            harness.ask(&upgraded, &limits, "alice", "recall", ""),
            recalled("")
        );
    }

    #[test]
    fn an_instance_serves_at_most_calls_per_instance_calls() {
        let harness = Harness::new();
        let limits = Limits {
            calls_per_instance: 3,
            ..Limits::default()
        };
        let plugin = harness.runtime.load_bytes(&misbehaving(), &limits).unwrap();
        let ask = |how: &str, body: &str| harness.ask(&plugin, &limits, "alice", how, body);
        ask("remember", "three calls").unwrap();
        assert_eq!(ask("recall", ""), recalled("three calls"));
        assert_eq!(ask("recall", ""), recalled("three calls"));
        assert_eq!(ask("recall", ""), recalled(""), "the fourth call is fresh");

        let fresh = Limits {
            calls_per_instance: 1,
            ..Limits::default()
        };
        harness
            .ask(&plugin, &fresh, "alice", "remember", "once")
            .unwrap();
        assert_eq!(
            harness.ask(&plugin, &fresh, "alice", "recall", ""),
            recalled("")
        );
    }

    #[test]
    fn output_is_captured_per_call() {
        let harness = Harness::new();
        let limits = Limits::default();
        let plugin = harness.runtime.load_bytes(&misbehaving(), &limits).unwrap();
        let ctx = CallContext {
            instance: "alice".into(),
            settings: Vec::new(),
            store: "alice".into(),
            shared_stores: Vec::new(),
            message_id: "test".into(),
            now_ms: 0,
        };
        let call = |how: &str| {
            let request = HttpRequest {
                path: format!("/{how}"),
                body: b"12345".to_vec(),
                ..Default::default()
            };
            let kv = KvOverlay::new(harness.db.clone(), &[StoreState::new("alice")]);
            harness
                .runtime
                .call(&plugin, kv, &limits, &ctx, Input::Webhook(&request))
                .output
        };
        assert_eq!(call("remember"), "remembering 5 bytes\n");
        assert_eq!(
            call("recall"),
            "",
            "the same instance, nothing printed this time"
        );
        assert_eq!(call("remember"), "remembering 5 bytes\n");
    }
}
