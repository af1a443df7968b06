//! Typed tables over the keyspaces of fjall, an LSM store.
//!
//! fjall orders keys by their bytes, so each key type has an encoding whose byte order is
//! its own order: numbers big-endian, and a string that other parts follow escaped and
//! terminated, so `("a", "z")` sorts before `("ab", "")` as it does as a tuple.

use std::marker::PhantomData;
use std::ops::Bound;

use anyhow::{Context, Result};
use fjall::{KeyspaceCreateOptions, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace};

pub type WriteTxn<'db> = fjall::SingleWriterWriteTx<'db>;

/// How a key or a value is stored.
pub trait Codec {
    /// What callers give.
    type In<'a>: Copy;
    /// What reads give back.
    type Out;
    fn encode(value: Self::In<'_>, out: &mut Vec<u8>);
    /// `None` when the bytes are not this codec's.
    fn decode(bytes: &[u8]) -> Option<Self::Out>;
}

pub struct U64;
pub struct U64Pair;
/// UTF-8, alone or last in a key.
pub struct Text;
/// Two strings, the first escaped and terminated so that pairs sort as tuples.
pub struct TextPair;
pub struct Bytes;
pub struct Unit;

impl Codec for U64 {
    type In<'a> = u64;
    type Out = u64;
    fn encode(value: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&value.to_be_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

impl Codec for U64Pair {
    type In<'a> = (u64, u64);
    type Out = (u64, u64);
    fn encode((first, second): (u64, u64), out: &mut Vec<u8>) {
        U64::encode(first, out);
        U64::encode(second, out);
    }
    fn decode(bytes: &[u8]) -> Option<(u64, u64)> {
        let (first, second) = bytes.split_at_checked(8)?;
        Some((U64::decode(first)?, U64::decode(second)?))
    }
}

impl Codec for Text {
    type In<'a> = &'a str;
    type Out = String;
    fn encode(value: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(value.as_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<String> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// A zero byte inside the escaped string becomes these two: above the terminator, so a
/// string sorts after each of its prefixes.
const ESCAPED_ZERO: [u8; 2] = [0, 0xFF];
const TERMINATOR: [u8; 2] = [0, 1];
/// Above every terminated string that starts the same: the end of a prefix's range.
const PAST_TERMINATOR: [u8; 2] = [0, 2];

/// `first` escaped, without its terminator.
fn escape(first: &str, out: &mut Vec<u8>) {
    for &byte in first.as_bytes() {
        match byte {
            0 => out.extend_from_slice(&ESCAPED_ZERO),
            byte => out.push(byte),
        }
    }
}

impl Codec for TextPair {
    type In<'a> = (&'a str, &'a str);
    type Out = (String, String);
    fn encode((first, second): (&str, &str), out: &mut Vec<u8>) {
        escape(first, out);
        out.extend_from_slice(&TERMINATOR);
        Text::encode(second, out);
    }
    fn decode(bytes: &[u8]) -> Option<(String, String)> {
        let mut first = Vec::new();
        let mut rest = bytes;
        loop {
            match rest {
                [0, 0xFF, tail @ ..] => {
                    first.push(0);
                    rest = tail;
                }
                [0, 1, tail @ ..] => {
                    return Some((String::from_utf8(first).ok()?, Text::decode(tail)?));
                }
                [byte, tail @ ..] if *byte != 0 => {
                    first.push(*byte);
                    rest = tail;
                }
                _ => return None,
            }
        }
    }
}

impl TextPair {
    /// The keys whose first part is `first` and whose second sorts after `after` (from the
    /// first when `None`).
    pub fn bounds(first: &str, after: Option<&str>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let mut prefix = Vec::new();
        escape(first, &mut prefix);
        let mut end = prefix.clone();
        end.extend_from_slice(&PAST_TERMINATOR);
        prefix.extend_from_slice(&TERMINATOR);
        let start = match after {
            Some(after) => {
                Text::encode(after, &mut prefix);
                Bound::Excluded(prefix)
            }
            None => Bound::Included(prefix),
        };
        (start, Bound::Excluded(end))
    }
}

impl Codec for Bytes {
    type In<'a> = &'a [u8];
    type Out = Vec<u8>;
    fn encode(value: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(value);
    }
    fn decode(bytes: &[u8]) -> Option<Vec<u8>> {
        Some(bytes.to_vec())
    }
}

impl Codec for Unit {
    type In<'a> = ();
    type Out = ();
    fn encode((): (), _: &mut Vec<u8>) {}
    fn decode(bytes: &[u8]) -> Option<()> {
        bytes.is_empty().then_some(())
    }
}

/// One keyspace, its keys of codec `K` and values of codec `V`. Reads take any reader: a
/// snapshot, or the committer's write transaction, which also sees its own writes.
pub struct Table<K, V> {
    keyspace: SingleWriterTxKeyspace,
    name: &'static str,
    codecs: PhantomData<fn() -> (K, V)>,
}

/// Each keyspace's write buffer, flushed to a table file when full. Smaller buffers flush
/// more often (each flush and the compactions after it cost the two cores CPU that requests
/// wait for); bigger ones hold more memory under load. 8 MiB measured best at half load
/// (BENCHMARKS.md, sixth pass).
const MEMTABLE_BYTES: u64 = 8 << 20;

fn encoded<C: Codec>(value: C::In<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    C::encode(value, &mut bytes);
    bytes
}

impl<K: Codec, V: Codec> Table<K, V> {
    pub fn open(db: &SingleWriterTxDatabase, name: &'static str) -> Result<Self> {
        let keyspace = db
            .keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .with_context(|| format!("cannot open table `{name}`"))?;
        Ok(Table {
            keyspace,
            name,
            codecs: PhantomData,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn get(&self, reader: &impl Readable, key: K::In<'_>) -> Result<Option<V::Out>> {
        reader
            .get(&self.keyspace, encoded::<K>(key))?
            .map(|value| self.value(&value))
            .transpose()
    }

    pub fn insert(&self, txn: &mut WriteTxn, key: K::In<'_>, value: V::In<'_>) {
        txn.insert(&self.keyspace, encoded::<K>(key), encoded::<V>(value));
    }

    pub fn remove(&self, txn: &mut WriteTxn, key: K::In<'_>) {
        txn.remove(&self.keyspace, encoded::<K>(key));
    }

    /// Removes the entry, giving back its value.
    pub fn take(&self, txn: &mut WriteTxn, key: K::In<'_>) -> Result<Option<V::Out>> {
        txn.take(&self.keyspace, encoded::<K>(key))?
            .map(|value| self.value(&value))
            .transpose()
    }

    /// Every entry, in key order (reversible).
    pub fn iter(
        &self,
        reader: &impl Readable,
    ) -> impl DoubleEndedIterator<Item = Result<(K::Out, V::Out)>> + '_ {
        self.entries(reader.iter(&self.keyspace))
    }

    /// The entries within `bounds`, in key order.
    pub fn range(
        &self,
        reader: &impl Readable,
        bounds: (Bound<K::In<'_>>, Bound<K::In<'_>>),
    ) -> impl DoubleEndedIterator<Item = Result<(K::Out, V::Out)>> + '_ {
        let (start, end) = bounds;
        self.range_bytes(reader, (start.map(encoded::<K>), end.map(encoded::<K>)))
    }

    /// The entries between encoded bounds, as [`TextPair::bounds`] gives them.
    pub fn range_bytes(
        &self,
        reader: &impl Readable,
        bounds: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    ) -> impl DoubleEndedIterator<Item = Result<(K::Out, V::Out)>> + '_ {
        self.entries(reader.range(&self.keyspace, bounds))
    }

    /// How many entries there are: a scan of the keys.
    pub fn count(&self, reader: &impl Readable) -> Result<u64> {
        Ok(reader.len(&self.keyspace)? as u64)
    }

    fn entries(
        &self,
        entries: fjall::Iter,
    ) -> impl DoubleEndedIterator<Item = Result<(K::Out, V::Out)>> + '_ {
        entries.map(move |guard| {
            let (key, value) = guard.into_inner()?;
            let key =
                K::decode(&key).with_context(|| format!("corrupt key in table `{}`", self.name))?;
            Ok((key, self.value(&value)?))
        })
    }

    fn value(&self, bytes: &[u8]) -> Result<V::Out> {
        V::decode(bytes).with_context(|| format!("corrupt value in table `{}`", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_of_text_sort_as_tuples_and_come_back_whole() {
        let mut pairs = [
            ("ab", ""),
            ("a", "z"),
            ("a\0", "b"),
            ("a", ""),
            ("", "x"),
            ("b", "a\0b"),
        ];
        let mut encoded_pairs: Vec<Vec<u8>> = pairs
            .iter()
            .map(|pair| encoded::<TextPair>(*pair))
            .collect();
        pairs.sort();
        encoded_pairs.sort();
        let decoded: Vec<(String, String)> = encoded_pairs
            .iter()
            .map(|bytes| TextPair::decode(bytes).unwrap())
            .collect();
        let expected: Vec<(String, String)> = pairs
            .iter()
            .map(|(first, second)| (first.to_string(), second.to_string()))
            .collect();
        assert_eq!(decoded, expected);
    }

    /// The committer reads what its own transaction wrote (the vendored fjall keeps those
    /// writes apart from the store's until the commit): point reads and scans see them over
    /// the stored entries, deletions included.
    #[test]
    fn a_transaction_reads_its_own_writes_over_the_stored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = SingleWriterTxDatabase::builder(dir.path()).open().unwrap();
        let table: Table<U64, Text> = Table::open(&db, "t").unwrap();
        let mut txn = db.write_tx();
        for key in [1, 2, 3] {
            table.insert(&mut txn, key, "stored");
        }
        txn.commit().unwrap();

        let mut txn = db.write_tx();
        table.insert(&mut txn, 2, "first");
        table.insert(&mut txn, 2, "rewritten");
        table.remove(&mut txn, 3);
        table.insert(&mut txn, 4, "new");
        let entries = |txn: &WriteTxn| -> Vec<(u64, String)> {
            table.iter(txn).map(Result::unwrap).collect()
        };
        let expected = [(1, "stored"), (2, "rewritten"), (4, "new")]
            .map(|(key, value)| (key, value.to_string()));
        assert_eq!(entries(&txn), expected);
        assert_eq!(
            table
                .range(&txn, (Bound::Excluded(1), Bound::Unbounded))
                .map(Result::unwrap)
                .collect::<Vec<_>>(),
            expected[1..]
        );
        assert_eq!(table.get(&txn, 2).unwrap().as_deref(), Some("rewritten"));
        assert_eq!(table.get(&txn, 3).unwrap(), None);
        assert_eq!(table.take(&mut txn, 4).unwrap().as_deref(), Some("new"));
        assert_eq!(table.get(&txn, 4).unwrap(), None);
        txn.commit().unwrap();

        let snapshot = db.read_tx();
        let stored: Vec<(u64, String)> = table.iter(&snapshot).map(Result::unwrap).collect();
        assert_eq!(stored, expected[..2]);
    }

    /// Bytes that make compares interesting: zero, the terminator's, both sides of the sign
    /// bit, the top; and any other.
    fn key_byte() -> impl proptest::strategy::Strategy<Value = u8> {
        use proptest::prelude::*;
        prop_oneof![
            Just(0),
            Just(1),
            Just(0x7F),
            Just(0x80),
            Just(0xFF),
            any::<u8>()
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Keys come back in the order of their bytes, whatever order they went in: from
        /// the transaction that wrote them (its writes merged into the scan) and from the
        /// store once it commits.
        #[test]
        fn keys_come_back_in_the_order_of_their_bytes(
            keys in proptest::collection::vec(proptest::collection::vec(key_byte(), 1..10), 1..80)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = SingleWriterTxDatabase::builder(dir.path()).open().unwrap();
            let table: Table<Bytes, Unit> = Table::open(&db, "t").unwrap();
            let mut txn = db.write_tx();
            for key in &keys {
                table.insert(&mut txn, key, ());
            }
            let mut expected = keys.clone();
            expected.sort();
            expected.dedup();
            let in_transaction: Vec<Vec<u8>> =
                table.iter(&txn).map(|entry| entry.unwrap().0).collect();
            proptest::prop_assert_eq!(&in_transaction, &expected);
            txn.commit().unwrap();
            let snapshot = db.read_tx();
            let stored: Vec<Vec<u8>> = table.iter(&snapshot).map(|entry| entry.unwrap().0).collect();
            proptest::prop_assert_eq!(&stored, &expected);
        }
    }

    #[test]
    fn the_bounds_of_a_first_part_hold_its_keys_only() {
        let within = |key: &(&str, &str), bounds: &(Bound<Vec<u8>>, Bound<Vec<u8>>)| {
            let key = encoded::<TextPair>(*key);
            let above = match &bounds.0 {
                Bound::Included(start) => key >= *start,
                Bound::Excluded(start) => key > *start,
                Bound::Unbounded => true,
            };
            let below = match &bounds.1 {
                Bound::Excluded(end) => key < *end,
                _ => unreachable!(),
            };
            above && below
        };
        let all = TextPair::bounds("a", None);
        assert!(within(&("a", ""), &all));
        assert!(within(&("a", "\u{10FFFF}"), &all));
        assert!(!within(&("ab", ""), &all));
        assert!(!within(&("a\0", ""), &all));
        assert!(!within(&("", "a"), &all));
        let after = TextPair::bounds("a", Some("k"));
        assert!(!within(&("a", "k"), &after));
        assert!(within(&("a", "k\0"), &after));
        assert!(within(&("a", "l"), &after));
    }
}
