//! The write-ahead log in front of redb.
//!
//! redb makes a transaction durable by writing every page it dirtied and syncing: a
//! copy-on-write path of pages per table touched, about 115 KB for a small batch of SMS, and
//! most of a commit's time. Instead, each batch's writes are appended here, as the table,
//! key and value bytes redb was given, and synced (a few KB), and redb commits the batch
//! without syncing. Now and then redb commits durably, which makes every earlier batch
//! durable there too, and the log starts over (a checkpoint): in a quiet moment, when no
//! batch waits ([`Log::checkpoint_worthwhile`]), or, under a load that leaves none, with a
//! batch ([`Log::checkpoint_due`]).
//!
//! At start-up the log's records are applied again, in order. Its records are whole puts
//! and removes, and the log always holds every write since redb's last durable commit, so
//! applying them to a database that already holds some or all of them ends in the same
//! state: a crash between a checkpoint and the log starting over loses nothing and doubles
//! nothing.
//!
//! Every checkpoint stores, in the same redb commit, the generation the log starts next, so
//! the log is bound to its database: records of an older generation are already in it and
//! are skipped; records of a newer one mean the database is not the one the log was
//! written against (an older copy put back, or another data directory's), and applying
//! them would mix two states, so the host refuses to start.
//!
//! The file is written in place from its start after every checkpoint and never shrinks, so
//! a sync flushes data only, not the file's size. Each record carries the generation it was
//! written in (one per checkpoint) and a checksum: reading stops at the first record that is
//! torn, zero or left over from an earlier generation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::faults::Faults;

/// What the file starts with: anything else there is not a log this build can read.
const MAGIC: &[u8; 16] = b"simrelay-log-v1\n";
/// Length, checksum, generation.
const RECORD_HEADER: usize = 16;
/// The file's size. Once half of it is used the next batch checkpoints; a generation that
/// outgrows the file (one huge batch) grows it.
const CAPACITY: u64 = 16 << 20;
/// The most time between checkpoints: it bounds the replay at start-up. A checkpoint
/// writes every page redb changed since the last one, and batches queue behind it, so
/// checkpoints are taken in quiet moments where there are any (below), and only under a
/// load that leaves none does a batch wait for one.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// The least time between checkpoints taken in a quiet moment: each costs a sync of its own.
const QUIET_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(3);
/// The value length that marks a remove.
const REMOVED: u32 = u32::MAX;

pub struct Log {
    file: File,
    path: PathBuf,
    faults: Option<Faults>,
    /// Where the next record goes.
    end: u64,
    /// Where the last record appended starts.
    last: u64,
    generation: u64,
    since_checkpoint: Instant,
}

/// One write of a logged batch: the table's [`super::TableId`], the key's bytes and the
/// value's bytes, `None` for a remove.
pub struct LoggedWrite<'a> {
    pub table: u8,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// Appends one write to a batch's record body.
pub fn encode(body: &mut Vec<u8>, table: u8, key: &[u8], value: Option<&[u8]>) {
    body.push(table);
    body.extend_from_slice(&(key.len() as u32).to_le_bytes());
    body.extend_from_slice(key);
    match value {
        Some(value) => {
            body.extend_from_slice(&(value.len() as u32).to_le_bytes());
            body.extend_from_slice(value);
        }
        None => body.extend_from_slice(&REMOVED.to_le_bytes()),
    }
}

/// The writes of one record body, in order.
pub fn decode(mut body: &[u8]) -> Result<Vec<LoggedWrite<'_>>> {
    fn take<'a>(body: &mut &'a [u8], len: usize) -> Result<&'a [u8]> {
        anyhow::ensure!(body.len() >= len, "a logged write runs past its record");
        let (taken, rest) = body.split_at(len);
        *body = rest;
        Ok(taken)
    }
    fn length(body: &mut &[u8]) -> Result<u32> {
        Ok(u32::from_le_bytes(take(body, 4)?.try_into()?))
    }
    let mut writes = Vec::new();
    while !body.is_empty() {
        let table = take(&mut body, 1)?[0];
        let key_len = length(&mut body)? as usize;
        let key = take(&mut body, key_len)?;
        let value = match length(&mut body)? {
            REMOVED => None,
            len => Some(take(&mut body, len as usize)?),
        };
        writes.push(LoggedWrite { table, key, value });
    }
    Ok(writes)
}

fn checksum(generation: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

impl Log {
    /// Opens the log in `data_dir`, creating it full size when missing, and returns it with
    /// the record bodies to be applied again, oldest first: those of its latest generation,
    /// when that is the one the database's last checkpoint started (`checkpointed`, `None`
    /// for a database from before checkpoints were recorded).
    pub fn open(
        data_dir: &Path,
        faults: Option<Faults>,
        checkpointed: Option<u64>,
    ) -> Result<(Log, Vec<Vec<u8>>)> {
        let path = data_dir.join("simrelay.log");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the write-ahead log {}", path.display()))?;
        let mut log = Log {
            file,
            path,
            faults,
            end: MAGIC.len() as u64,
            last: MAGIC.len() as u64,
            generation: 0,
            since_checkpoint: Instant::now(),
        };
        let mut magic = [0u8; MAGIC.len()];
        let size = log.file.metadata()?.len();
        if size >= MAGIC.len() as u64 {
            log.file.read_exact_at(&mut magic, 0)?;
        }
        let bodies = if &magic == MAGIC {
            let bodies = log.read_records(size)?;
            match checkpointed {
                Some(started) if !bodies.is_empty() && log.generation > started => {
                    anyhow::bail!(
                        "{} holds writes made after the last checkpoint of the database \
                         beside it: that database is not the one the log was written \
                         against (an older copy put back, or another data directory's), and \
                         applying them would mix the two. Put back the database the log \
                         belongs to, or move the log away to start from the database as it \
                         is, without those writes",
                        log.path.display()
                    )
                }
                // Written before the database's last checkpoint, which holds them already.
                Some(started) if log.generation < started => Vec::new(),
                _ => bodies,
            }
        } else {
            anyhow::ensure!(
                magic.iter().all(|byte| *byte == 0),
                "{} is not a simrelay write-ahead log (or one of a newer build): move it away \
                 only if the database beside it was closed cleanly",
                log.path.display()
            );
            Vec::new()
        };
        // Later generations must stay above the database's, whatever the clock does.
        log.generation = log.generation.max(checkpointed.unwrap_or(0));
        if size < CAPACITY || &magic != MAGIC {
            log.preallocate(size).with_context(|| {
                format!(
                    "cannot fill the write-ahead log {} to {} MiB",
                    log.path.display(),
                    CAPACITY >> 20
                )
            })?;
        }
        Ok((log, bodies))
    }

    /// Fills the file to [`CAPACITY`] with zeros behind its magic, and makes that durable
    /// (the file's size and its entry in the directory too).
    fn preallocate(&mut self, size: u64) -> Result<()> {
        self.write(0, MAGIC)?;
        let zeros = vec![0u8; 1 << 20];
        let mut offset = size.max(MAGIC.len() as u64);
        while offset < CAPACITY {
            let len = zeros.len().min((CAPACITY - offset) as usize);
            self.write(offset, &zeros[..len])?;
            offset += len as u64;
        }
        self.sync()?;
        self.file.sync_all()?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The bodies of the records of the generation the file starts with.
    fn read_records(&mut self, size: u64) -> Result<Vec<Vec<u8>>> {
        let mut bodies = Vec::new();
        let mut offset = MAGIC.len() as u64;
        let mut header = [0u8; RECORD_HEADER];
        while offset + RECORD_HEADER as u64 <= size {
            self.file.read_exact_at(&mut header, offset)?;
            let len = u32::from_le_bytes(header[0..4].try_into()?) as u64;
            let sum = u32::from_le_bytes(header[4..8].try_into()?);
            let generation = u64::from_le_bytes(header[8..16].try_into()?);
            let body_at = offset + RECORD_HEADER as u64;
            let first = offset == MAGIC.len() as u64;
            if len == 0 || body_at + len > size || (!first && generation != self.generation) {
                break;
            }
            let mut body = vec![0u8; len as usize];
            self.file.read_exact_at(&mut body, body_at)?;
            if checksum(generation, &body) != sum {
                break;
            }
            self.generation = generation;
            bodies.push(body);
            offset = body_at + len;
        }
        Ok(bodies)
    }

    /// Whether a checkpoint is worth taking now, with no batch waiting.
    pub fn checkpoint_worthwhile(&self) -> bool {
        self.end > MAGIC.len() as u64
            && self.since_checkpoint.elapsed() >= QUIET_CHECKPOINT_INTERVAL
    }

    /// Whether the batch just logged should also commit durably in redb.
    pub fn checkpoint_due(&self) -> bool {
        self.since_checkpoint.elapsed() >= CHECKPOINT_INTERVAL || self.end >= CAPACITY / 2
    }

    /// Appends one batch's writes and syncs them.
    pub fn append(&mut self, body: &[u8]) -> Result<()> {
        let mut record = Vec::with_capacity(RECORD_HEADER + body.len());
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&checksum(self.generation, body).to_le_bytes());
        record.extend_from_slice(&self.generation.to_le_bytes());
        record.extend_from_slice(body);
        self.write(self.end, &record)?;
        self.sync()?;
        self.last = self.end;
        self.end += record.len() as u64;
        Ok(())
    }

    /// Takes back the record just appended, when its batch did not commit in redb after all:
    /// a restart must not apply what was never acknowledged.
    pub fn retract(&mut self) -> Result<()> {
        self.end = self.last;
        self.write(self.last, &[0; RECORD_HEADER])?;
        self.sync()?;
        Ok(())
    }

    /// The generation the log starts at the next checkpoint, which the checkpoint's commit
    /// stores in the database.
    ///
    /// Generations start from the clock, in microseconds, so that those of a new run are
    /// above any an earlier run left in the file, even when the record the file starts with
    /// was torn.
    pub fn next_generation(&self) -> u64 {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64);
        (self.generation + 1).max(now_us)
    }

    /// Starts `generation` (from [`Log::next_generation`]) from the file's start, once redb
    /// holds everything durably, and that generation with it.
    pub fn checkpointed(&mut self, generation: u64) {
        self.generation = generation;
        self.end = MAGIC.len() as u64;
        self.since_checkpoint = Instant::now();
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if let Some(faults) = &self.faults {
            faults.before_write()?;
        }
        self.file.write_all_at(data, offset)
    }

    fn sync(&self) -> io::Result<()> {
        if let Some(faults) = &self.faults {
            faults.before_sync()?;
        }
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(dir: &Path) -> Vec<Vec<u8>> {
        Log::open(dir, None, None).unwrap().1
    }

    fn start_generation(log: &mut Log) -> u64 {
        let generation = log.next_generation();
        log.checkpointed(generation);
        generation
    }

    #[test]
    fn the_log_applies_only_to_the_database_whose_checkpoint_started_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), None, None).unwrap();
        let started = start_generation(&mut log);
        log.append(b"after the checkpoint").unwrap();
        let open = |checkpointed| Log::open(dir.path(), None, Some(checkpointed));
        assert_eq!(open(started).unwrap().1, [b"after the checkpoint"]);
        assert!(
            open(started + 1).unwrap().1.is_empty(),
            "a later checkpoint already holds the record"
        );
        let error = open(started - 1).err().unwrap().to_string();
        assert!(
            error.contains("holds writes made after the last checkpoint of the database"),
            "{error}"
        );
        let (log, _) = open(started + 5).unwrap();
        assert!(
            log.next_generation() > started + 5,
            "generations stay above the database's, whatever the clock says"
        );
    }

    #[test]
    fn the_records_since_the_last_checkpoint_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, records) = Log::open(dir.path(), None, None).unwrap();
        assert!(records.is_empty());
        start_generation(&mut log);
        for body in [&b"first"[..], b"second", b"third"] {
            log.append(body).unwrap();
        }
        assert_eq!(reopen(dir.path()), [&b"first"[..], b"second", b"third"]);
        assert_eq!(
            std::fs::metadata(dir.path().join("simrelay.log"))
                .unwrap()
                .len(),
            CAPACITY,
            "written in place"
        );
    }

    #[test]
    fn records_of_an_earlier_generation_are_not_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), None, None).unwrap();
        start_generation(&mut log);
        for body in [&b"aaaa"[..], b"bbbb", b"cccc"] {
            log.append(body).unwrap();
        }
        start_generation(&mut log);
        // The same length as the record it overwrites: "bbbb" follows it intact.
        log.append(b"dddd").unwrap();
        assert_eq!(reopen(dir.path()), [b"dddd"]);
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), None, None).unwrap();
        start_generation(&mut log);
        log.append(b"kept").unwrap();
        let torn_at = log.end;
        log.append(b"torn in half").unwrap();
        log.append(b"after the tear").unwrap();
        // A byte of the second record's body, as a crash in the middle of its write leaves it.
        log.file
            .write_all_at(b"X", torn_at + RECORD_HEADER as u64 + 3)
            .unwrap();
        assert_eq!(reopen(dir.path()), [b"kept"]);
    }

    #[test]
    fn a_retracted_record_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), None, None).unwrap();
        start_generation(&mut log);
        log.append(b"kept").unwrap();
        log.append(b"failed in redb").unwrap();
        log.retract().unwrap();
        assert_eq!(reopen(dir.path()), [b"kept"]);
        log.append(b"next").unwrap();
        assert_eq!(reopen(dir.path()), [&b"kept"[..], b"next"]);
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("simrelay.log");
        std::fs::write(&path, b"some other program's file, longer than the magic").unwrap();
        let error = Log::open(dir.path(), None, None).err().unwrap().to_string();
        assert!(
            error.contains("is not a simrelay write-ahead log"),
            "{error}"
        );
        assert!(std::fs::read(&path).unwrap().starts_with(b"some other"));
    }

    #[test]
    fn writes_survive_encoding() {
        let mut body = Vec::new();
        encode(&mut body, 1, b"key", Some(b"value"));
        encode(&mut body, 11, b"gone", None);
        encode(&mut body, 2, b"", Some(b""));
        let writes = decode(&body).unwrap();
        let seen: Vec<_> = writes
            .iter()
            .map(|write| (write.table, write.key, write.value))
            .collect();
        assert_eq!(
            seen,
            [
                (1, &b"key"[..], Some(&b"value"[..])),
                (11, b"gone", None),
                (2, b"", Some(b"")),
            ]
        );
        assert!(decode(&body[..body.len() - 1]).is_err(), "cut short");
    }
}
