//! Faults on request, for the tests of what a failing disk does.
//!
//! They are used only when `SIMRELAY_FAULT_FILE` names a file. While that file exists, its
//! words say what goes wrong: `sync-delay-ms=N` holds every commit N ms (a slow disk),
//! `fail-sync` and `fail-write` make commits fail as on a full disk.
//!
//! fjall writes and syncs its journal itself, so the faults strike just before a commit
//! reaches it: a failed commit has written nothing, as when a full disk refuses the write.

use std::io;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct Faults {
    trigger: PathBuf,
}

impl Faults {
    pub fn new(trigger: PathBuf) -> Self {
        Faults { trigger }
    }

    /// Waits or fails as the trigger file's words ask, before a commit.
    pub fn before_commit(&self) -> io::Result<()> {
        let words = std::fs::read_to_string(&self.trigger).unwrap_or_default();
        let delay = words
            .split_whitespace()
            .find_map(|word| word.strip_prefix("sync-delay-ms="))
            .and_then(|ms| ms.parse().ok());
        if let Some(ms) = delay {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        match words
            .split_whitespace()
            .find(|word| ["fail-write", "fail-sync"].contains(word))
        {
            Some(fault) => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("injected fault `{fault}`: no space left on device"),
            )),
            None => Ok(()),
        }
    }
}
