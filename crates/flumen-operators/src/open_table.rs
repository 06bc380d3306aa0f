//! A hash table of values that carry their own 32-bit hash (TopN's
//! partitions): open addressing with linear probing over the values
//! themselves, so a lookup usually reads one or two cache lines where a
//! hashbrown table reads its control bytes and then its buckets. Home slots
//! can be computed for a batch first and prefetched a few rows ahead (as
//! `word_set` and `hash_heads` do). Slot indices are stable until the
//! table grows or loses a value; removal shifts later values of a probe
//! run back (no tombstones).

use flumen_state::probing::grown_capacity;

/// A value that knows its hash.
pub(crate) trait Hashed {
    /// Its 32-bit hash, as it was inserted.
    fn hash32(&self) -> u32;
}

/// The table grows when it would be fuller than this many eighths.
const MAX_LOAD_EIGHTHS: usize = 7;

/// Values of `T` by their hash.
pub(crate) struct OpenTable<T> {
    /// A power-of-two number of slots, or none.
    slots: Vec<Option<T>>,
    len: usize,
}

impl<T: Hashed> OpenTable<T> {
    /// An empty table.
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
        }
    }

    /// Bytes of its slots.
    pub(crate) fn allocation_size(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<T>>()
    }

    /// The slot where a probe for `hash` starts; valid until the table
    /// grows.
    pub(crate) fn home(&self, hash: u32) -> usize {
        if self.slots.is_empty() {
            return 0;
        }
        let bits = self.slots.len().trailing_zeros();
        // Fibonacci hashing: the top bits of the product spread any hash.
        (u64::from(hash).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
    }

    /// Asks the CPU to start loading `home`'s cache line.
    #[inline]
    pub(crate) fn prefetch(&self, home: usize) {
        flumen_state::probing::prefetch(&self.slots, home);
    }

    /// Makes room for `more` new values, so that no insert of them moves
    /// a slot found before.
    pub(crate) fn reserve(&mut self, more: usize) {
        let Some(capacity) = grown_capacity(self.len, more, self.slots.len(), MAX_LOAD_EIGHTHS)
        else {
            return;
        };
        let mut slots = Vec::with_capacity(capacity);
        slots.resize_with(capacity, || None);
        let old = std::mem::replace(&mut self.slots, slots);
        self.len = 0;
        for value in old.into_iter().flatten() {
            let home = self.home(value.hash32());
            self.insert(home, value);
        }
    }

    /// The slot of the value with `hash` (probe from `home`) for which
    /// `eq` holds.
    #[inline]
    pub(crate) fn find(&self, home: usize, hash: u32, eq: impl Fn(&T) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = home;
        while let Some(value) = &self.slots[i] {
            if value.hash32() == hash && eq(value) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Puts `value`, known to be absent, in the first free slot from
    /// `home` (room reserved); its slot.
    pub(crate) fn insert(&mut self, home: usize, value: T) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = home;
        while self.slots[i].is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i] = Some(value);
        self.len += 1;
        i
    }

    /// The value in slot `i`, if any.
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.slots.get(i)?.as_ref()
    }

    /// The value in slot `i`, if any.
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.slots.get_mut(i)?.as_mut()
    }

    /// Takes the value out of slot `i`, moving later values of its probe
    /// run back so every value stays reachable from its home.
    pub(crate) fn remove(&mut self, i: usize) -> Option<T> {
        let removed = self.slots.get_mut(i)?.take()?;
        self.len -= 1;
        let mask = self.slots.len() - 1;
        let mut hole = i;
        let mut j = (i + 1) & mask;
        while let Some(value) = &self.slots[j] {
            let home = self.home(value.hash32());
            // The value may move back to the hole unless its home lies
            // (cyclically) after the hole and at or before `j`.
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
            j = (j + 1) & mask;
        }
        Some(removed)
    }

    /// Keeps the values for which `keep` holds (it may change them, not
    /// their hash); the table is rebuilt at the size the kept ones need.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut T) -> bool) {
        let old = std::mem::take(&mut self.slots);
        let kept: Vec<T> = old
            .into_iter()
            .flatten()
            .filter_map(|mut v| keep(&mut v).then_some(v))
            .collect();
        self.len = 0;
        self.reserve(kept.len());
        for value in kept {
            let home = self.home(value.hash32());
            self.insert(home, value);
        }
    }

    /// Takes out, in place, the values for which `drop` holds, handing
    /// each to `dropped`: one pass over the slots, no new table. `drop` may
    /// see a kept value more than once (removals shift values back).
    pub(crate) fn remove_where(
        &mut self,
        mut drop: impl FnMut(&T) -> bool,
        mut dropped: impl FnMut(T),
    ) {
        for i in 0..self.slots.len() {
            // A removal shifts a later value into slot `i`: look again. A
            // value shifted into a slot before `i` (a run wrapping past the
            // end) was looked at already.
            while self.slots[i].as_ref().is_some_and(&mut drop) {
                if let Some(value) = self.remove(i) {
                    dropped(value);
                }
            }
        }
    }

    /// How many values it holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every value, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    /// Every value, in slot order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten()
    }

    /// Drops every value in slot order, first calling `prefetch` on the
    /// value `ahead` slots later, so that values owning memory elsewhere
    /// (a list on the heap) have it in cache when they free it.
    pub(crate) fn clear_prefetching(&mut self, ahead: usize, prefetch: impl Fn(&T)) {
        for i in 0..self.slots.len() {
            if let Some(Some(later)) = self.slots.get(i + ahead) {
                prefetch(later);
            }
            self.slots[i] = None;
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Item {
        hash: u32,
        key: u64,
        value: u64,
    }

    impl Hashed for Item {
        fn hash32(&self) -> u32 {
            self.hash
        }
    }

    /// A value that counts its drops.
    struct Counted(u32, std::rc::Rc<std::cell::Cell<usize>>);

    impl Hashed for Counted {
        fn hash32(&self) -> u32 {
            self.0
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.set(self.1.get() + 1);
        }
    }

    /// Clearing drops every value then and there, and prefetches each but
    /// the first `ahead` slots' values before.
    #[test]
    fn clearing_drops_every_value_and_prefetches_those_ahead() {
        let drops = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut t = OpenTable::new();
        t.reserve(40);
        // Slots 0 to 39 taken, each value at its home.
        for h in 0..40u32 {
            t.insert(h as usize, Counted(h, drops.clone()));
        }
        let prefetched = std::cell::RefCell::new(Vec::new());
        t.clear_prefetching(4, |v| prefetched.borrow_mut().push(v.0));
        assert_eq!(drops.get(), 40, "every value dropped");
        assert_eq!(t.len(), 0);
        assert!(t.iter().next().is_none());
        let prefetched = prefetched.into_inner();
        assert_eq!(
            prefetched,
            (4..40).collect::<Vec<u32>>(),
            "each value past the first 4"
        );
    }

    fn find(t: &OpenTable<Item>, key: u64) -> Option<Item> {
        let hash = (key % 97) as u32;
        let slot = t.find(t.home(hash), hash, |i| i.key == key)?;
        t.get(slot).copied()
    }

    /// Against a map, with few distinct hashes (97) so probe runs are long
    /// and wrap around the table's end: inserts, updates through found
    /// slots, removals (which shift runs back), `retain` and growth keep
    /// every value findable and no removed one.
    #[test]
    fn values_stay_findable_through_removal_retain_and_growth() {
        let mut t: OpenTable<Item> = OpenTable::new();
        let mut expected: HashMap<u64, u64> = HashMap::new();
        let mut removed = 0;
        for step in 0..6_000u64 {
            let key = (step * 7_919) % 1_500;
            let hash = (key % 97) as u32;
            if step % 7 == 3 {
                let home = t.home(hash);
                if let Some(slot) = t.find(home, hash, |i| i.key == key) {
                    assert_eq!(t.remove(slot).map(|i| i.key), Some(key));
                    removed += 1;
                }
                expected.remove(&key);
                continue;
            }
            t.reserve(1);
            let home = t.home(hash);
            match t.find(home, hash, |i| i.key == key) {
                Some(slot) => t.get_mut(slot).unwrap().value += step,
                None => {
                    t.insert(
                        home,
                        Item {
                            hash,
                            key,
                            value: step,
                        },
                    );
                }
            }
            *expected.entry(key).or_insert(0) += step;
            if step % 1_000 == 999 {
                t.retain(|i| i.key % 5 != 0);
                expected.retain(|k, _| k % 5 != 0);
            }
            if step % 100 == 50 {
                check(&t, &expected);
            }
        }
        check(&t, &expected);
        assert!(removed > 500, "{removed} removals");
    }

    /// `remove_where` over long probe runs, some wrapping past the end
    /// (97 hashes), rounds of it between inserts: it hands over exactly the
    /// values dropped, the rest stay findable, and the table keeps its size.
    #[test]
    fn remove_where_takes_out_exactly_the_dropped_values_in_place() {
        let mut t: OpenTable<Item> = OpenTable::new();
        let mut expected: HashMap<u64, u64> = HashMap::new();
        for round in 0..6u64 {
            for key in round * 400..round * 400 + 700 {
                let hash = (key % 97) as u32;
                t.reserve(1);
                let home = t.home(hash);
                if t.find(home, hash, |i| i.key == key).is_none() {
                    t.insert(
                        home,
                        Item {
                            hash,
                            key,
                            value: key,
                        },
                    );
                    expected.insert(key, key);
                }
            }
            let size = t.slots.len();
            let mut gone = Vec::new();
            t.remove_where(|i| (i.key / 3 + round) % 4 == 0, |i| gone.push(i.key));
            let mut want: Vec<u64> = expected
                .keys()
                .copied()
                .filter(|k| (k / 3 + round) % 4 == 0)
                .collect();
            expected.retain(|k, _| (k / 3 + round) % 4 != 0);
            gone.sort_unstable();
            want.sort_unstable();
            assert_eq!(gone, want, "round {round}");
            assert_eq!(t.slots.len(), size, "no new table");
            assert_eq!(t.len(), expected.len());
            check(&t, &expected);
        }
    }

    /// Runs that wrap past the table's last slot: items of two hashes whose
    /// home is one of the last two slots fill the end and the start; each
    /// removal leaves the others findable.
    #[test]
    fn removal_keeps_runs_that_wrap_around_the_end() {
        let mut t: OpenTable<Item> = OpenTable::new();
        t.reserve(40);
        let last = t.slots.len() - 1;
        let with_home = |slot: usize| (0u32..).find(|&h| t.home(h) == slot).unwrap();
        let hashes = [with_home(last), with_home(last - 1)];
        let mut expected: HashMap<u64, u64> = HashMap::new();
        for key in 0..20u64 {
            let hash = hashes[key as usize % 2];
            t.insert(
                t.home(hash),
                Item {
                    hash,
                    key,
                    value: key,
                },
            );
            expected.insert(key, key);
        }
        assert!(t.slots[0].is_some(), "the runs wrap");
        for key in [3u64, 0, 17, 8, 1, 19, 10, 2, 11, 4] {
            let hash = hashes[key as usize % 2];
            let slot = t.find(t.home(hash), hash, |i| i.key == key).unwrap();
            t.remove(slot);
            expected.remove(&key);
            for (&k, &v) in &expected {
                let h = hashes[k as usize % 2];
                let found = t.find(t.home(h), h, |i| i.key == k);
                assert_eq!(
                    found.and_then(|s| t.get(s)).map(|i| i.value),
                    Some(v),
                    "key {k}"
                );
            }
        }
    }

    /// Every key is found with its value, or is absent as expected.
    fn check(t: &OpenTable<Item>, expected: &HashMap<u64, u64>) {
        assert_eq!(t.len, expected.len());
        assert_eq!(t.iter().count(), expected.len());
        for key in 0..1_500 {
            assert_eq!(
                find(t, key).map(|i| i.value),
                expected.get(&key).copied(),
                "key {key}"
            );
        }
    }
}
