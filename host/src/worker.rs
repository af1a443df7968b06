//! Blocking work on behalf of async tasks: plugin calls, and what they wait for.
//!
//! A plugin call takes tens of microseconds, less than the thread switch of moving it to
//! another thread, so [`call_here`] runs it on the async worker itself. What turns out
//! long there first has tokio hand the worker's other tasks to another thread: a plugin
//! running past an epoch tick ([`hand_on`]), a wait for a store lock or a WASI call that
//! must wait ([`off_worker`]).

use std::cell::Cell;
use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::StreamResult;
use wasmtime_wasi::p2::bindings::sync::io::poll::{self, Pollable};
use wasmtime_wasi::p2::bindings::sync::io::streams::{self, InputStream, OutputStream};
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::bindings::wasi::io::streams as async_streams;

thread_local! {
    /// Whether this thread runs [`call_here`]'s work for an async task.
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Runs short blocking work (one plugin call and the queueing of its outcome) right here, on
/// the async worker thread. A panic comes back as its message.
pub fn call_here<R>(work: impl FnOnce() -> R) -> Result<R, String> {
    struct Leaving;
    impl Drop for Leaving {
        fn drop(&mut self) {
            ON_WORKER.set(false);
        }
    }
    ON_WORKER.set(true);
    let _leaving = Leaving;
    catch_panic(work)
}

/// Runs long blocking work (a batch of plugin calls) on this worker thread, after tokio has
/// handed the thread's other tasks to another. Needs the multi-thread runtime.
pub fn block_here<R>(work: impl FnOnce() -> R) -> Result<R, String> {
    catch_panic(|| tokio::task::block_in_place(work))
}

fn catch_panic<R>(work: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|text| text.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    })
}

/// Whether [`off_worker`] would hand the worker on: inside [`call_here`], on the
/// multi-thread runtime.
fn on_worker() -> bool {
    ON_WORKER.get()
        && tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        })
}

/// Runs `wait`, which may block for long. Inside [`call_here`], tokio first hands the
/// worker's other tasks to another thread (at the first such wait of a call; later ones
/// find it handed on already) and leaves the runtime's context for `wait`.
pub fn off_worker<R>(wait: impl FnOnce() -> R) -> R {
    if on_worker() {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

/// How long [`hand_on`] gives another thread to take the worker's other tasks:
/// `block_in_place` takes them back if none has by the time its closure returns.
const HANDOFF_WAIT: Duration = Duration::from_millis(1);

/// Inside [`call_here`], has tokio hand the worker's other tasks to another thread now, for
/// work found to run long.
pub fn hand_on() {
    if on_worker() {
        tokio::task::block_in_place(|| std::thread::sleep(HANDOFF_WAIT));
    }
}

/// Runs a WASI future to its end: at once if it is ready at once, as the host's own
/// output streams are; otherwise on wasmtime-wasi's bridge into tokio, off the worker.
fn finish<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    if let Poll::Ready(output) = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        return output;
    }
    off_worker(|| wasmtime_wasi::runtime::in_tokio(future))
}

/// `wasi:io` for plugins, as wasmtime-wasi's synchronous bindings give it, except that
/// what waits goes through [`finish`]: theirs enter tokio's runtime to wait, which panics
/// on an async worker.
pub struct WorkerIo;

impl HasData for WorkerIo {
    type Data<'a> = IoTable<'a>;
}

pub struct IoTable<'a>(pub &'a mut ResourceTable);

/// Adds `wasi:io/poll` and `wasi:io/streams` over those of `add_to_linker_sync`.
pub fn add_io_to_linker<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    table: fn(&mut T) -> IoTable<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    poll::add_to_linker::<T, WorkerIo>(linker, table)?;
    streams::add_to_linker::<T, WorkerIo>(linker, table)?;
    linker.allow_shadowing(false);
    Ok(())
}

impl poll::Host for IoTable<'_> {
    fn poll(&mut self, pollables: Vec<Resource<Pollable>>) -> wasmtime::Result<Vec<u32>> {
        finish(async_poll::Host::poll(self.0, pollables))
    }
}

impl poll::HostPollable for IoTable<'_> {
    fn ready(&mut self, pollable: Resource<Pollable>) -> wasmtime::Result<bool> {
        finish(async_poll::HostPollable::ready(self.0, pollable))
    }
    fn block(&mut self, pollable: Resource<Pollable>) -> wasmtime::Result<()> {
        finish(async_poll::HostPollable::block(self.0, pollable))
    }
    fn drop(&mut self, pollable: Resource<Pollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.0, pollable)
    }
}

impl streams::Host for IoTable<'_> {
    fn convert_stream_error(
        &mut self,
        error: wasmtime_wasi::p2::StreamError,
    ) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, error)
    }
}

impl streams::HostOutputStream for IoTable<'_> {
    fn drop(&mut self, stream: Resource<OutputStream>) -> wasmtime::Result<()> {
        finish(async_streams::HostOutputStream::drop(self.0, stream))
    }
    fn check_write(&mut self, stream: Resource<OutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, stream)
    }
    fn write(&mut self, stream: Resource<OutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, stream, bytes)
    }
    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<OutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        finish(async_streams::HostOutputStream::blocking_write_and_flush(
            self.0, stream, bytes,
        ))
    }
    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<OutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        finish(
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }
    fn subscribe(
        &mut self,
        stream: Resource<OutputStream>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        streams::HostOutputStream::subscribe(self.0, stream)
    }
    fn write_zeroes(&mut self, stream: Resource<OutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }
    fn flush(&mut self, stream: Resource<OutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, stream)
    }
    fn blocking_flush(&mut self, stream: Resource<OutputStream>) -> StreamResult<()> {
        let borrowed = Resource::new_borrow(stream.rep());
        finish(async_streams::HostOutputStream::blocking_flush(
            self.0, borrowed,
        ))
    }
    fn splice(
        &mut self,
        destination: Resource<OutputStream>,
        source: Resource<InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, destination, source, len)
    }
    fn blocking_splice(
        &mut self,
        destination: Resource<OutputStream>,
        source: Resource<InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        finish(async_streams::HostOutputStream::blocking_splice(
            self.0,
            destination,
            source,
            len,
        ))
    }
}

impl streams::HostInputStream for IoTable<'_> {
    fn drop(&mut self, stream: Resource<InputStream>) -> wasmtime::Result<()> {
        finish(async_streams::HostInputStream::drop(self.0, stream))
    }
    fn read(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, stream, len)
    }
    fn blocking_read(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        finish(async_streams::HostInputStream::blocking_read(
            self.0, stream, len,
        ))
    }
    fn skip(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, stream, len)
    }
    fn blocking_skip(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<u64> {
        finish(async_streams::HostInputStream::blocking_skip(
            self.0, stream, len,
        ))
    }
    fn subscribe(&mut self, stream: Resource<InputStream>) -> wasmtime::Result<Resource<Pollable>> {
        streams::HostInputStream::subscribe(self.0, stream)
    }
}
