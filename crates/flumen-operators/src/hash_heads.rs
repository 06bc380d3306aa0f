//! A join side's index from a key hash to the newest stored row with it:
//! open addressing with linear probing over (hash, head) pairs, four to a
//! cache line, so a lookup usually reads one line where a `HashMap` reads
//! its control bytes and then its slots. Home slots can be computed for a
//! whole batch first and prefetched a few rows ahead (as `word_set` does).

use flumen_state::probing::grown_capacity;

/// A head no slot holds: the slot is empty.
pub(crate) const NIL: u32 = u32::MAX;

/// The table grows when it would be fuller than this many eighths.
const MAX_LOAD_EIGHTHS: usize = 6;

/// Hash to head. A hash is any `u64`: emptiness is a `NIL` head.
#[derive(Default)]
pub(crate) struct HashHeads {
    /// A power-of-two number of (hash, head) slots, or none.
    slots: Vec<(u64, u32)>,
    len: usize,
}

impl HashHeads {
    /// Slots allocated (16 bytes each).
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Forgets every hash, keeping the allocation.
    pub(crate) fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = (0, NIL));
        self.len = 0;
    }

    /// Makes room for `more` new hashes, so that home slots computed
    /// before inserting them stay valid.
    pub(crate) fn reserve(&mut self, more: usize) {
        let Some(capacity) = grown_capacity(self.len, more, self.slots.len(), MAX_LOAD_EIGHTHS)
        else {
            return;
        };
        let old = std::mem::replace(&mut self.slots, vec![(0, NIL); capacity]);
        self.len = 0;
        for (hash, head) in old.into_iter().filter(|&(_, head)| head != NIL) {
            let home = self.home(hash);
            *self.entry(home, hash) = head;
        }
    }

    /// The slot where `hash`'s probe starts; valid until the table grows.
    pub(crate) fn home(&self, hash: u64) -> usize {
        // Join hashes are uniform already; fold the high half in anyway.
        (hash ^ (hash >> 32)) as usize & self.slots.len().saturating_sub(1)
    }

    /// Asks the CPU to start loading `home`'s cache line.
    #[inline]
    pub(crate) fn prefetch(&self, home: usize) {
        flumen_state::probing::prefetch(&self.slots, home);
    }

    /// The head of `hash` (probe starting at `home`), if it has one.
    #[inline]
    pub(crate) fn get(&self, home: usize, hash: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = home;
        loop {
            let (h, head) = self.slots[i];
            if head == NIL {
                return None;
            }
            if h == hash {
                return Some(head);
            }
            i = (i + 1) & mask;
        }
    }

    /// The head of `hash`, added as `NIL` when absent (the caller sets
    /// it); room must have been reserved.
    #[inline]
    pub(crate) fn entry(&mut self, home: usize, hash: u64) -> &mut u32 {
        let mask = self.slots.len() - 1;
        let mut i = home;
        loop {
            let (h, head) = self.slots[i];
            if head == NIL {
                self.slots[i].0 = hash;
                self.len += 1;
                return &mut self.slots[i].1;
            }
            if h == hash {
                return &mut self.slots[i].1;
            }
            i = (i + 1) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Against a map: heads are found under their hash, the last one set,
    /// through growth and `clear`, hashes that share a home (low bits equal) are told apart,
    /// and an absent hash is absent, whatever its value (0 included).
    #[test]
    fn heads_are_found_under_their_hashes() {
        let mut heads = HashHeads::default();
        assert_eq!(heads.get(0, 5), None);
        let mut expected = HashMap::new();
        for i in 0..10_000u64 {
            // 3,000 hashes, each set again and again, many with the same
            // low bits, and hash 0 among them.
            let hash = (i % 3_000) << 40 | (i % 3);
            heads.reserve(1);
            let home = heads.home(hash);
            *heads.entry(home, hash) = i as u32;
            expected.insert(hash, i as u32);
        }
        assert_eq!(heads.len, expected.len());
        for (&hash, &head) in &expected {
            assert_eq!(heads.get(heads.home(hash), hash), Some(head));
        }
        let absent = 1u64 << 63;
        assert_eq!(heads.get(heads.home(absent), absent), None);
        heads.clear();
        assert_eq!(heads.get(heads.home(0), 0), None);
    }
}
