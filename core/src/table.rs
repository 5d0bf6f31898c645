//! A persistent hash table for the configuration snapshots.
//!
//! The proxy keeps every resource of the cluster and four indexes over
//! them, in snapshots that connections read while the config client builds
//! the next one. The structure has to clone in O(1), update without copying
//! the whole, look up in a few cache misses, and cost little per entry. No
//! crate we could find does all four. Measured at 110,000 entries (16-byte
//! entries for memory; string keys like `ns-12/svc-1234-5` for lookups, a
//! million of them at random; one clone and one insert for the update):
//!
//! | structure | bytes per entry | lookup | clone + insert |
//! |---|---|---|---|
//! | `imbl::HashMap` (HAMT: leaves are fixed 16- or 32-slot arrays) | 117 | 620-640 ns | 4.6 µs |
//! | `imbl::OrdMap` (B-tree of 16) | 26 | 1.2-1.5 µs (a key comparison per step) | - |
//! | `std::collections::HashMap` (not persistent) | 20 | - | - |
//! | this table | 26 (a 4-byte hash and padding per slot) | 375-385 ns | 5.1 µs |
//!
//! Layout: 2^bits shards, picked by the top bits of the entry's 64-bit
//! hash; each shard a vector of `(hash, entry)` slots sorted by the hash's
//! low 32 bits, shared between snapshots behind an `Arc`. A lookup hashes
//! once, binary-searches one shard of at most a few dozen slots, and
//! compares keys only where the hashes are equal. Cloning the table clones
//! one `Arc`; the first write to a shard a snapshot still shares copies that
//! shard (tens of entries) and, once per snapshot, the array of shard
//! pointers of one page (64 shards) and the page index. Shards double in number when they average more than
//! [`MAX_AVERAGE`] entries, and halve when they fall far below it.
//!
//! Entries carry their key ([`Keyed`]): an `Arc` of a resource is keyed by
//! the resource's own key, so a set of resources costs one pointer and a
//! hash per entry, not a copy of every key.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// Shards double when they average more entries than this.
const MAX_AVERAGE: usize = 32;

/// An entry that carries its own key.
pub trait Keyed {
    type Key: Hash + Eq + ?Sized;
    fn key(&self) -> &Self::Key;
}

/// A map entry: the key and its value.
impl<K: Hash + Eq, V> Keyed for (K, V) {
    type Key = K;
    fn key(&self) -> &K {
        &self.0
    }
}

#[derive(Debug, Clone)]
struct Slot<T> {
    /// The low 32 bits of the key's hash (the shard has the top bits).
    hash: u32,
    value: T,
}

type Shard<T> = Option<Arc<Vec<Slot<T>>>>;

/// Shards are grouped in pages of 2^PAGE_BITS, so that the first write
/// after a snapshot copies a page of pointers and the page index, not one
/// pointer per shard (4,096 shards at 110,000 entries).
const PAGE_BITS: u32 = 6;

type Page<T> = Arc<Vec<Shard<T>>>;

/// A persistent hash table of [`Keyed`] entries (see the module docs).
#[derive(Clone)]
pub struct Table<T> {
    pages: Arc<Vec<Page<T>>>,
    bits: u32,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            pages: Arc::new(vec![Arc::new(vec![None])]),
            bits: 0,
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T: Keyed + Clone + std::fmt::Debug> std::fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl<T: Keyed + Clone> Table<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The page and the shard within it for a hash.
    fn locate(&self, hash: u64) -> (usize, usize) {
        let index = if self.bits == 0 {
            0
        } else {
            (hash >> (64 - self.bits)) as usize
        };
        (index >> PAGE_BITS, index & ((1 << PAGE_BITS) - 1))
    }

    fn shard(&self, (page, shard): (usize, usize)) -> Option<&[Slot<T>]> {
        self.pages[page][shard].as_deref().map(Vec::as_slice)
    }

    /// The position of `key` in `slots`, or where it would go.
    fn find<Q>(slots: &[Slot<T>], low: u32, key: &Q) -> Result<usize, usize>
    where
        T::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let start = slots.partition_point(|s| s.hash < low);
        for (i, slot) in slots[start..].iter().enumerate() {
            if slot.hash != low {
                return Err(start + i);
            }
            if slot.value.key().borrow() == key {
                return Ok(start + i);
            }
        }
        Err(slots.len())
    }

    /// Where the entry with this key is: its shard and slot.
    fn position<Q>(&self, key: &Q) -> Option<((usize, usize), usize)>
    where
        T::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let at = self.locate(hash);
        let i = Self::find(self.shard(at)?, hash as u32, key).ok()?;
        Some((at, i))
    }

    /// The entry with this key.
    pub fn get<Q>(&self, key: &Q) -> Option<&T>
    where
        T::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let slots = self.shard(self.locate(hash))?;
        let i = Self::find(slots, hash as u32, key).ok()?;
        Some(&slots[i].value)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        T::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// A shard to write, copied first if a snapshot shares it. `extra`:
    /// room to reserve when it is copied (an insert's one more slot).
    fn shard_mut(&mut self, (page, index): (usize, usize), extra: usize) -> &mut Vec<Slot<T>> {
        let page = Arc::make_mut(&mut Arc::make_mut(&mut self.pages)[page]);
        let shard = page[index].get_or_insert_with(|| Arc::new(Vec::new()));
        if Arc::get_mut(shard).is_none() {
            let mut copy = Vec::with_capacity(shard.len() + extra);
            copy.extend(shard.iter().cloned());
            *shard = Arc::new(copy);
        }
        // Unique now: just made, or copied above.
        Arc::make_mut(shard)
    }

    /// The entry with this key, to change in place (copying its shard if a
    /// snapshot shares it). The change must leave the entry's key as it is.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut T>
    where
        T::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (at, i) = self.position(key)?;
        Some(&mut self.shard_mut(at, 0)[i].value)
    }

    /// Inserts an entry; returns the one it replaces (same key).
    pub fn insert(&mut self, value: T) -> Option<T> {
        let hash = self.hash(value.key());
        let at = self.locate(hash);
        let low = hash as u32;
        let found = match self.shard(at) {
            Some(slots) => Self::find(slots, low, value.key()),
            None => Err(0),
        };
        let slots = self.shard_mut(at, 1);
        match found {
            Ok(i) => Some(std::mem::replace(&mut slots[i].value, value)),
            Err(i) => {
                slots.insert(i, Slot { hash: low, value });
                self.len += 1;
                if self.len > MAX_AVERAGE << self.bits {
                    self.resize(self.bits + 1);
                }
                None
            }
        }
    }

    /// The entry with this key, inserted by `make` if absent, to change in
    /// place (its key must stay as it is).
    pub fn get_or_insert_with<Q>(&mut self, key: &Q, make: impl FnOnce() -> T) -> &mut T
    where
        T::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (at, i) = match self.position(key) {
            Some(found) => found,
            None => {
                self.insert(make());
                match self.position(key) {
                    Some(found) => found,
                    // `make` built an entry under another key: a caller's bug.
                    None => unreachable!("get_or_insert_with: the new entry has another key"),
                }
            }
        };
        &mut self.shard_mut(at, 0)[i].value
    }

    /// Removes the entry with this key.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<T>
    where
        T::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (at, i) = self.position(key)?;
        let slots = self.shard_mut(at, 0);
        let removed = slots.remove(i).value;
        if slots.is_empty() {
            self.drop_shard(at);
        }
        self.len -= 1;
        self.fewer_shards();
        Some(removed)
    }

    /// Keeps the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let doomed: Vec<(usize, usize)> = (0..self.pages.len())
            .flat_map(|p| (0..self.pages[p].len()).map(move |s| (p, s)))
            .filter(|&at| {
                self.shard(at)
                    .is_some_and(|slots| slots.iter().any(|s| !keep(&s.value)))
            })
            .collect();
        if doomed.is_empty() {
            return;
        }
        // `keep` is asked once per entry of these shards again: it must
        // answer the same (it is a predicate, not a counter).
        for at in doomed {
            let slots = self.shard_mut(at, 0);
            let before = slots.len();
            slots.retain(|s| keep(&s.value));
            let (after, empty) = (slots.len(), slots.is_empty());
            self.len -= before - after;
            if empty {
                self.drop_shard(at);
            }
        }
        self.fewer_shards();
    }

    /// Halves the shards while they average far fewer entries than
    /// [`MAX_AVERAGE`].
    fn fewer_shards(&mut self) {
        let bits = self.bits;
        let mut fewer = bits;
        while fewer > 0 && self.len < (MAX_AVERAGE / 8) << fewer {
            fewer -= 1;
        }
        if fewer != bits {
            self.resize(fewer);
        }
    }

    fn drop_shard(&mut self, (page, shard): (usize, usize)) {
        Arc::make_mut(&mut Arc::make_mut(&mut self.pages)[page])[shard] = None;
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.pages
            .iter()
            .flat_map(|page| page.iter().flatten())
            .flat_map(|slots| slots.iter().map(|s| &s.value))
    }

    /// Returns the spare capacity of the shards no snapshot shares (after a
    /// large update: shards grown one insert at a time keep up to half
    /// their capacity spare).
    pub fn shrink_to_fit(&mut self) {
        let Some(pages) = Arc::get_mut(&mut self.pages) else {
            return;
        };
        for page in pages.iter_mut().filter_map(Arc::get_mut) {
            for slots in page.iter_mut().flatten().filter_map(Arc::get_mut) {
                slots.shrink_to_fit();
            }
        }
    }

    /// Rebuilds the table with 2^bits shards.
    fn resize(&mut self, bits: u32) {
        let mut shards: Vec<Vec<Slot<T>>> = (0..1usize << bits).map(|_| Vec::new()).collect();
        let shift = |hash: u64| {
            if bits == 0 {
                0
            } else {
                (hash >> (64 - bits)) as usize
            }
        };
        for value in self.iter() {
            let hash = self.hash(value.key());
            shards[shift(hash)].push(Slot {
                hash: hash as u32,
                value: value.clone(),
            });
        }
        let mut shards = shards.into_iter().map(|mut slots| {
            if slots.is_empty() {
                return None;
            }
            slots.sort_by_key(|s| s.hash);
            slots.shrink_to_fit();
            Some(Arc::new(slots))
        });
        let per_page = 1usize << bits.min(PAGE_BITS);
        let pages = (0..(1usize << bits) / per_page)
            .map(|_| Arc::new(shards.by_ref().take(per_page).collect()))
            .collect();
        self.pages = Arc::new(pages);
        self.bits = bits;
    }
}

impl<K: Hash + Eq, V> Table<(K, V)>
where
    (K, V): Clone,
{
    /// The value under `key`.
    pub fn value<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A key whose hash is chosen, to force equal low hashes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Colliding(u32, u64);
    impl Hash for Colliding {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.0.hash(state)
        }
    }

    #[test]
    fn behaves_as_a_map_through_growth_and_shrinking() {
        let mut table: Table<(u64, u64)> = Table::default();
        let mut model = HashMap::new();
        // A deterministic mix of inserts, replacements and removals.
        let mut x: u64 = 1;
        for step in 0..40_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = (x >> 33) % 5_000;
            if step % 3 == 2 {
                assert_eq!(table.remove(&key), model.remove(&key).map(|v| (key, v)));
            } else {
                assert_eq!(
                    table.insert((key, step)),
                    model.insert(key, step).map(|v| (key, v))
                );
            }
            assert_eq!(table.len(), model.len());
        }
        assert!(table.bits > 0, "grew");
        for (k, v) in &model {
            assert_eq!(table.value(k), Some(v));
        }
        assert_eq!(table.iter().count(), model.len());
        // Down to a few: shards halve.
        let keys: Vec<u64> = model.keys().copied().collect();
        for k in &keys[3..] {
            table.remove(k);
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.bits, 0);
        for k in &keys[..3] {
            assert_eq!(table.value(k), model.get(k));
        }
    }

    #[test]
    fn a_snapshot_is_untouched_by_later_writes() {
        let mut table: Table<(String, u32)> = Table::default();
        for i in 0..1_000 {
            table.insert((format!("k{i}"), i));
        }
        let snapshot = table.clone();
        table.insert(("k1".into(), 100));
        table.remove("k2");
        table.insert(("new".into(), 7));
        if let Some(entry) = table.get_mut("k3") {
            entry.1 = 33;
        }
        for i in 1_000..3_000 {
            table.insert((format!("k{i}"), i));
        }
        assert_eq!(snapshot.len(), 1_000);
        assert_eq!(snapshot.value("k1"), Some(&1));
        assert_eq!(snapshot.value("k2"), Some(&2));
        assert_eq!(snapshot.value("k3"), Some(&3));
        assert_eq!(snapshot.value("new"), None);
        assert_eq!(table.value("k1"), Some(&100));
        assert_eq!(table.value("k2"), None);
        assert_eq!(table.value("k3"), Some(&33));
        assert_eq!(table.len(), 3_000);
    }

    #[test]
    fn equal_hashes_are_told_apart_by_key() {
        let mut table: Table<(Colliding, u32)> = Table::default();
        for i in 0..100u32 {
            table.insert((Colliding(7, u64::from(i)), i));
        }
        assert_eq!(table.len(), 100);
        for i in 0..100u32 {
            assert_eq!(table.value(&Colliding(7, u64::from(i))), Some(&i));
        }
        table.remove(&Colliding(7, 50));
        assert_eq!(table.value(&Colliding(7, 50)), None);
        assert_eq!(table.value(&Colliding(7, 51)), Some(&51));
        table.retain(|(k, _)| k.1 % 2 == 0);
        // The even keys but 50, removed above.
        assert_eq!(table.len(), 49);
        assert!(table.iter().all(|(k, _)| k.1 % 2 == 0));
    }

    #[test]
    fn get_or_insert_with_inserts_once() {
        let mut table: Table<(String, Vec<u32>)> = Table::default();
        table
            .get_or_insert_with("a", || ("a".into(), vec![]))
            .1
            .push(1);
        table
            .get_or_insert_with("a", || ("a".into(), vec![]))
            .1
            .push(2);
        assert_eq!(table.value("a"), Some(&vec![1, 2]));
        assert_eq!(table.len(), 1);
    }
}
