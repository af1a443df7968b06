//! Mark-once de-duplication with expiry: "have I already handled this id?" for gateways that
//! re-send pushes and pollers that see the same item twice, without state growing forever.
//!
//! A mark is live for `window_ms` after it was set. An expired mark that no sweep has deleted
//! yet counts as absent. [`MarkOnce::sweep`] does bounded work per call, so it fits in a
//! tick. [`ExpiryIndex`] gives any other record the same expiry.

use crate::KeyValue;

/// A stable 64-bit fingerprint of some fields, as 16 hex digits, for ids of things a provider
/// sends without one. FNV-1a over the fields, each followed by 0xff, a byte UTF-8 never
/// contains, so moving text from one field to the next changes the fingerprint.
pub fn fingerprint<S: AsRef<str>>(fields: &[S]) -> String {
    Fingerprint::of(fields).hex()
}

/// [`fingerprint`] built field by field, without gathering the fields first.
#[derive(Clone, Copy)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    /// The fingerprint of `fields`, for [`Fingerprint::hex_after`] where [`fingerprint`]'s
    /// bare hex digits are not the whole id.
    pub fn of<S: AsRef<str>>(fields: &[S]) -> Self {
        fields.iter().fold(Fingerprint::default(), |hash, field| {
            hash.field(field.as_ref().as_bytes())
        })
    }

    fn bytes(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(PRIME);
        }
    }

    /// Adds a field.
    pub fn field(mut self, bytes: &[u8]) -> Self {
        self.bytes(bytes);
        self.bytes(&[0xff]);
        self
    }

    /// Adds a JSON value as a field, in its compact text (`value.to_string()`), without
    /// writing that text out.
    pub fn json_field(mut self, value: &serde_json::Value) -> Self {
        serde_json::to_writer(&mut self, value).expect("hashing never fails");
        self.bytes(&[0xff]);
        self
    }

    /// The fingerprint as 16 hex digits.
    pub fn hex(&self) -> String {
        self.hex_after("")
    }

    /// `prefix` followed by [`Fingerprint::hex`], in one allocation: ids and keys are built
    /// on every call, and `format!` costs several times as much in a plugin.
    pub fn hex_after(&self, prefix: &str) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(prefix.len() + 16);
        out.push_str(prefix);
        for shift in (0..16).rev() {
            out.push(char::from(DIGITS[(self.0 >> (shift * 4)) as usize & 0xf]));
        }
        out
    }
}

/// `n` as the 20 decimal digits, zero-padded, that make keys sort by time.
fn padded_decimal(n: u64) -> [u8; 20] {
    let mut digits = [b'0'; 20];
    let mut rest = n;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    digits
}

/// `n` in decimal, as `n.to_string()` writes it, without the formatting machinery.
fn decimal(n: u64) -> String {
    let digits = padded_decimal(n);
    let first = digits.iter().position(|digit| *digit != b'0').unwrap_or(19);
    String::from_utf8(digits[first..].to_vec()).expect("digits are ASCII")
}

impl std::io::Write for Fingerprint {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.bytes(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How long a sweep that found nothing more to delete waits before listing keys again, at
/// most: a short window waits half of it, so nothing outlives its window by much.
const SWEEP_PAUSE_MS: u64 = 60_000;

/// One insert in this many (by the hash of its id, so without a read) checks whether its
/// index is behind, i.e. its last sweep deleted all it was allowed to.
const CATCH_UP_EVERY: u64 = 16;

/// How many expired entries such an insert then deletes: twice the inserts it stands for,
/// so that expiry catches up with inserts at any rate, however seldom the instance ticks.
/// See [`ExpiryIndex::catch_up_on`].
pub const CATCH_UP: usize = 32;

/// What follows the prefix in the keys of index entries, `p@/<time>/<id>`.
const ENTRIES: &str = "@/";

/// What `p@next` holds while the index is behind: a sweep is due at once.
const BEHIND: u64 = 0;

/// Ids indexed by the time they were recorded, so that what expires with them is found by
/// listing keys, without reading every value. Under a prefix `p`:
/// - `p@/<recorded at, 20 digits>/<id>` → empty;
/// - `p@next` → when the next sweep is due, decimal milliseconds; 0 while the index is
///   behind.
///
/// Whatever the index stands for (a mark, a record) lives elsewhere: [`ExpiryIndex::sweep`]
/// hands each expired id to its caller to delete.
pub struct ExpiryIndex<'a> {
    kv: &'a dyn KeyValue,
    prefix: &'a str,
}

impl<'a> ExpiryIndex<'a> {
    /// The index under `prefix`.
    pub fn new(kv: &'a dyn KeyValue, prefix: &'a str) -> Self {
        ExpiryIndex { kv, prefix }
    }

    fn entries_prefix(&self) -> String {
        [self.prefix, ENTRIES].concat()
    }

    fn next_sweep_key(&self) -> String {
        [self.prefix, "@next"].concat()
    }

    /// Records `id` at `at_ms`: it expires a window after.
    pub fn add(&self, at_ms: u64, id: &str) -> Result<(), String> {
        let at = padded_decimal(at_ms);
        let at = std::str::from_utf8(&at).expect("digits are ASCII");
        self.kv
            .set(&[self.prefix, ENTRIES, at, "/", id].concat(), b"")
    }

    /// Whether inserting `id` should also sweep [`CATCH_UP`] entries: for one id in
    /// [`CATCH_UP_EVERY`], with one read, when the last sweep deleted all it was allowed to
    /// and more may have expired. The index is listed only while it is behind, which
    /// matters on stores that list every key (Spin's).
    pub fn catch_up_on(&self, id: &str) -> Result<bool, String> {
        if Fingerprint::default().field(id.as_bytes()).0 % CATCH_UP_EVERY != 0 {
            return Ok(false);
        }
        Ok(self.kv.get(&self.next_sweep_key())?.as_deref() == Some(BEHIND.to_string().as_bytes()))
    }

    /// Hands at most `limit` entries older than `window_ms`, oldest first, to
    /// `expire(id, recorded_at_ms)`, deletes them and returns how many. Lists the index only
    /// when a sweep is due: while it is behind (the last sweep hit its limit), else a pause
    /// after the last.
    pub fn sweep(
        &self,
        now_ms: u64,
        window_ms: u64,
        limit: usize,
        mut expire: impl FnMut(&str, u64) -> Result<(), String>,
    ) -> Result<usize, String> {
        let due = self
            .kv
            .get(&self.next_sweep_key())?
            .and_then(|value| String::from_utf8(value).ok()?.parse::<u64>().ok())
            .is_none_or(|due| due <= now_ms);
        if !due {
            return Ok(0);
        }
        let entries_prefix = self.entries_prefix();
        // The zero-padded time sorts oldest first: only the oldest `limit` can expire now,
        // so a large index is not listed whole every sweep.
        let entries = self.kv.first_keys(&entries_prefix, limit)?;
        let mut expired = 0;
        for key in &entries {
            if expired == limit {
                break;
            }
            let parsed = key[entries_prefix.len()..]
                .split_once('/')
                .and_then(|(at, id)| Some((at.parse::<u64>().ok()?, id)));
            let Some((recorded_at, id)) = parsed else {
                self.kv.delete(key)?;
                continue;
            };
            if recorded_at.saturating_add(window_ms) > now_ms {
                break;
            }
            expire(id, recorded_at)?;
            self.kv.delete(key)?;
            expired += 1;
        }
        let next = if expired == limit {
            BEHIND
        } else {
            now_ms.saturating_add(SWEEP_PAUSE_MS.min(window_ms / 2))
        };
        self.kv
            .set(&self.next_sweep_key(), next.to_string().as_bytes())?;
        Ok(expired)
    }
}

/// Marks under a prefix `p`: `p/<id>` → the time the id was marked, decimal milliseconds,
/// with an [`ExpiryIndex`] under the same prefix.
pub struct MarkOnce<'a> {
    kv: &'a dyn KeyValue,
    prefix: &'a str,
    window_ms: u64,
}

impl<'a> MarkOnce<'a> {
    /// Marks under `prefix` (e.g. `"seen"`) that stay live for `window_ms`.
    pub fn new(kv: &'a dyn KeyValue, prefix: &'a str, window_ms: u64) -> Self {
        MarkOnce {
            kv,
            prefix,
            window_ms,
        }
    }

    fn mark_key(&self, id: &str) -> String {
        [self.prefix, "/", id].concat()
    }

    fn index(&self) -> ExpiryIndex<'a> {
        ExpiryIndex::new(self.kv, self.prefix)
    }

    /// When `id` was marked, if its mark is still live at `now_ms`.
    pub fn marked_at(&self, id: &str, now_ms: u64) -> Result<Option<u64>, String> {
        self.live_mark(&self.mark_key(id), now_ms)
    }

    fn live_mark(&self, mark_key: &str, now_ms: u64) -> Result<Option<u64>, String> {
        let marked_at = self
            .kv
            .get(mark_key)?
            .and_then(|value| String::from_utf8(value).ok()?.parse::<u64>().ok());
        Ok(marked_at.filter(|at| at.saturating_add(self.window_ms) > now_ms))
    }

    pub fn is_marked(&self, id: &str, now_ms: u64) -> Result<bool, String> {
        Ok(self.marked_at(id, now_ms)?.is_some())
    }

    /// Marks `id` at `now_ms`, live or not before; now and then deletes expired marks while
    /// the index is behind.
    pub fn mark(&self, id: &str, now_ms: u64) -> Result<(), String> {
        self.mark_under(&self.mark_key(id), id, now_ms)
    }

    fn mark_under(&self, mark_key: &str, id: &str, now_ms: u64) -> Result<(), String> {
        self.kv.set(mark_key, decimal(now_ms).as_bytes())?;
        let index = self.index();
        index.add(now_ms, id)?;
        if index.catch_up_on(id)? {
            self.sweep(now_ms, CATCH_UP)?;
        }
        Ok(())
    }

    /// `true` the first time `id` is seen within the window, and marks it; `false` while an
    /// earlier mark is live.
    pub fn first_time(&self, id: &str, now_ms: u64) -> Result<bool, String> {
        let mark_key = self.mark_key(id);
        if self.live_mark(&mark_key, now_ms)?.is_some() {
            return Ok(false);
        }
        self.mark_under(&mark_key, id, now_ms)?;
        Ok(true)
    }

    /// Deletes at most `limit` expired marks and returns how many; see [`ExpiryIndex::sweep`].
    pub fn sweep(&self, now_ms: u64, limit: usize) -> Result<usize, String> {
        self.index()
            .sweep(now_ms, self.window_ms, limit, |id, marked_at| {
                // A newer mark of the same id has its own index entry; leave it alone.
                let mark_key = self.mark_key(id);
                if self.kv.get(&mark_key)?.as_deref() == Some(marked_at.to_string().as_bytes()) {
                    self.kv.delete(&mark_key)?;
                }
                Ok(())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use proptest::prelude::*;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn fingerprint_matches_fnv1a_reference_values() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c; here each field ends in 0xff.
        let hash_of_a = (0xaf63_dc4c_8601_ec8c_u64 ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
        assert_eq!(fingerprint(&["a"]), format!("{hash_of_a:016x}"));
        assert_ne!(fingerprint(&["ab", ""]), fingerprint(&["a", "b"]));
        assert_eq!(fingerprint::<&str>(&[]), "cbf29ce484222325");
    }

    #[test]
    fn hex_and_padded_times_match_their_format_strings() {
        for n in [0, 1, 0xf0, 1_700_000_000_000, u64::MAX] {
            let print = Fingerprint(n);
            assert_eq!(print.hex(), format!("{n:016x}"));
            assert_eq!(print.hex_after("id-"), format!("id-{n:016x}"));
            assert_eq!(padded_decimal(n), *format!("{n:020}").as_bytes());
            assert_eq!(decimal(n), n.to_string());
        }
    }

    #[test]
    fn json_fields_hash_as_their_compact_text() {
        let value = serde_json::json!({"a": [1, "x\"y", null], "b": 2.5});
        assert_eq!(
            Fingerprint::default()
                .field(b"dev")
                .json_field(&value)
                .hex(),
            fingerprint(&["dev".to_string(), value.to_string()])
        );
    }

    #[test]
    fn marks_once_within_the_window() {
        let kv = MemoryStore::default();
        let seen = MarkOnce::new(&kv, "seen", HOUR);
        assert!(seen.first_time("a", 1_000).unwrap());
        assert!(!seen.first_time("a", 1_000 + HOUR - 1).unwrap());
        assert!(seen.first_time("b", 2_000).unwrap());
        // Expired but not swept: counts as new, and is marked again.
        assert!(seen.first_time("a", 1_000 + HOUR).unwrap());
        assert_eq!(
            seen.marked_at("a", 1_000 + HOUR).unwrap(),
            Some(1_000 + HOUR)
        );
    }

    #[test]
    fn sweep_deletes_only_expired_marks_and_is_bounded() {
        let kv = MemoryStore::default();
        let seen = MarkOnce::new(&kv, "seen", HOUR);
        for n in 0..5 {
            seen.mark(&format!("old{n}"), n).unwrap();
        }
        seen.mark("fresh", HOUR).unwrap();
        // A re-marked id keeps its new mark when its old index entry is swept.
        seen.mark("old0", HOUR + 1).unwrap();

        assert_eq!(seen.sweep(HOUR + 10, 3).unwrap(), 3);
        // Hit the limit: due again at once.
        assert_eq!(seen.sweep(HOUR + 10, 3).unwrap(), 2);
        // Found less than the limit: paused for a minute.
        assert_eq!(seen.sweep(HOUR + 20, 3).unwrap(), 0);
        assert!(seen.is_marked("old0", HOUR + 10).unwrap());
        assert!(seen.is_marked("fresh", HOUR + 10).unwrap());
        for n in 1..5 {
            assert!(kv.get(&format!("seen/old{n}")).unwrap().is_none());
        }
        let mut keys = kv.keys("seen").unwrap();
        keys.retain(|key| key != "seen@next");
        assert_eq!(keys.len(), 4, "{keys:?}");

        assert_eq!(seen.sweep(3 * HOUR, 10).unwrap(), 2);
        assert_eq!(kv.keys("seen").unwrap(), ["seen@next"]);
    }

    /// Ticks sweep a bounded number of marks; marking faster than that would grow the store
    /// without end. Once a tick's sweep hits its limit, new marks delete expired ones too,
    /// until the index has caught up.
    #[test]
    fn marks_made_faster_than_ticks_sweep_are_caught_up_by_later_marks() {
        const WINDOW: u64 = 500;
        const TICK: u64 = 1_000;
        const TICK_LIMIT: usize = 10;
        let kv = MemoryStore::default();
        let seen = MarkOnce::new(&kv, "seen", WINDOW);
        for now in 0..6_000 {
            seen.mark(&format!("id{now}"), now).unwrap();
            if now % TICK == TICK - 1 {
                seen.sweep(now, TICK_LIMIT).unwrap();
            }
        }
        let marks = kv.first_keys("seen/", usize::MAX).unwrap().len() as u64;
        // Live marks, plus what expired since the last tick: the ticks alone would have
        // left about 5,940.
        assert!(marks <= WINDOW + TICK, "{marks} marks");
        assert!(seen.is_marked("id5999", 5_999).unwrap());
        assert!(!kv.exists("seen/id3000").unwrap());
    }

    #[test]
    fn other_prefixes_are_untouched() {
        let kv = MemoryStore::default();
        kv.set("seen-other/x", b"1").unwrap();
        let seen = MarkOnce::new(&kv, "seen", 1);
        seen.mark("x", 0).unwrap();
        seen.sweep(10, 10).unwrap();
        assert!(kv.exists("seen-other/x").unwrap());
        assert!(!kv.exists("seen/x").unwrap());
    }

    proptest! {
        #[test]
        fn arbitrary_ids_and_times(ids in proptest::collection::vec(".{0,12}", 0..8),
                                   times in proptest::collection::vec(any::<u64>(), 1..8),
                                   window in any::<u64>()) {
            let kv = MemoryStore::default();
            let seen = MarkOnce::new(&kv, "p", window);
            for (id, now) in ids.iter().zip(times.iter().cycle()) {
                let first = seen.first_time(id, *now).unwrap();
                prop_assert!(!first || seen.is_marked(id, *now).unwrap() || window == 0);
                seen.sweep(*now, 3).unwrap();
            }
        }
    }
}
