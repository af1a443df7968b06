//! A storage backend that fails on request, for the tests of what a failing disk does.
//!
//! It is used only when `SIMRELAY_FAULT_FILE` names a file. While that file exists, its
//! words say what goes wrong: `sync-delay-ms=N` holds every fsync N ms (a slow disk),
//! `fail-sync` and `fail-write` make them fail as a full disk does.

use std::fs::File;
use std::io;
use std::ops::Bound;
use std::path::PathBuf;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// The faults the trigger file asks for, checked before each write and sync: redb's
/// ([`FaultyBackend`]) and the write-ahead log's.
#[derive(Clone, Debug)]
pub struct Faults {
    trigger: PathBuf,
}

impl Faults {
    pub fn new(trigger: PathBuf) -> Self {
        Faults { trigger }
    }

    /// The words of the trigger file, empty when it is absent.
    fn words(&self) -> String {
        std::fs::read_to_string(&self.trigger).unwrap_or_default()
    }

    fn injected(&self, fault: &str) -> io::Result<()> {
        if self.words().split_whitespace().any(|word| word == fault) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("injected fault `{fault}`: no space left on device"),
            ));
        }
        Ok(())
    }

    pub fn before_write(&self) -> io::Result<()> {
        self.injected("fail-write")
    }

    pub fn before_sync(&self) -> io::Result<()> {
        let words = self.words();
        let delay = words
            .split_whitespace()
            .find_map(|word| word.strip_prefix("sync-delay-ms="))
            .and_then(|ms| ms.parse().ok());
        if let Some(ms) = delay {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        self.injected("fail-sync")
    }
}

#[derive(Debug)]
pub struct FaultyBackend {
    inner: FileBackend,
    faults: Faults,
}

impl FaultyBackend {
    pub fn new(file: File, faults: Faults) -> Result<Self, redb::DatabaseError> {
        Ok(FaultyBackend {
            inner: FileBackend::new(file)?,
            faults,
        })
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.before_write()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.before_sync()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.faults.before_write()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
