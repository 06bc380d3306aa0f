//! A set of 56-bit keys, each with 8 flag bits, stored as one `u64` word per
//! key in an open-addressing table (linear probing): a lookup reads the
//! words themselves, one cache line for most keys, where a hashbrown table
//! reads its control bytes and then its slots, two lines apart. A batch can
//! compute every key's home slot first and prefetch a few keys ahead, so
//! the cache misses of a large set overlap instead of queueing. A table
//! that grows gives its old slots' memory back as it moves them, so growing
//! never holds both tables whole (q16's sets would hold 1.5× their size).

use crate::slots::Slots;
use flumen_state::probing::grown_capacity;

/// Flag bits below each word's key.
pub(crate) const FLAG_BITS: u32 = 8;

/// The table grows when it would be fuller than this many eighths.
const MAX_LOAD_EIGHTHS: usize = 6;

/// Keys and their flags. A stored word always has a flag set, so 0 marks
/// an empty slot.
pub(crate) struct WordSet {
    /// `key << FLAG_BITS | flags`, or 0; a power-of-two number of slots.
    slots: Slots,
    len: usize,
    /// Mixed into every hash, so inputs cannot be chosen to collide.
    seed: u64,
}

impl WordSet {
    /// An empty set.
    pub(crate) fn new() -> Self {
        use std::hash::BuildHasher;
        Self {
            slots: Slots::empty(),
            len: 0,
            seed: std::collections::hash_map::RandomState::new().hash_one(0u64),
        }
    }

    /// Slots allocated (each 8 bytes).
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Makes room for `more` new keys, so that home slots computed before
    /// inserting them stay valid.
    pub(crate) fn reserve(&mut self, more: usize) {
        let Some(capacity) = grown_capacity(self.len, more, self.slots.len(), MAX_LOAD_EIGHTHS)
        else {
            return;
        };
        let old = std::mem::replace(&mut self.slots, Slots::zeroed(capacity));
        self.len = 0;
        self.move_in(old);
    }

    /// Places every word of `old` (a table being replaced), giving its
    /// memory back a chunk at a time as the words leave it. A word's home
    /// here is the low bits of the hash its home in `old` was, so when this
    /// table is `k` times as large, the words of one chunk of `old` land in
    /// the same chunk of each of its `k` stretches of `old`'s length: those
    /// pages are faulted in first, once each and writable (a probe reads a
    /// slot before writing it, which on a fresh page faults twice).
    fn move_in(&mut self, mut old: Slots) {
        /// Slots moved between two discards: 1 MiB.
        const CHUNK: usize = 1 << 17;
        let stretches = if old.is_empty() {
            0
        } else {
            self.slots.len() / old.len()
        };
        let mut start = 0;
        while start < old.len() {
            let end = (start + CHUNK).min(old.len());
            for k in 0..stretches {
                let at = k * old.len();
                self.slots.touch(at + start..at + end);
            }
            for &word in old[start..end].iter().filter(|&&w| w != 0) {
                let home = self.home(word >> FLAG_BITS);
                self.place(home, word);
            }
            old.discard(start..end);
            start = end;
        }
    }

    /// The slot where `key`'s probe starts. Valid until the table grows.
    pub(crate) fn home(&self, key: u64) -> usize {
        let product = u128::from(key ^ self.seed) * 0x9E37_79B9_7F4A_7C15;
        let hash = (product as u64) ^ ((product >> 64) as u64);
        hash as usize & (self.slots.len() - 1)
    }

    /// Asks the CPU to start loading `home`'s cache line.
    #[inline]
    pub(crate) fn prefetch(&self, home: usize) {
        flumen_state::probing::prefetch(&self.slots, home);
    }

    /// Sets `flags` (not 0) on `key`, adding it if absent; `home` is
    /// `self.home(key)` and room was reserved. Returns the flags that were
    /// not set before.
    #[inline]
    pub(crate) fn insert(&mut self, home: usize, key: u64, flags: u8) -> u8 {
        let mask = self.slots.len() - 1;
        let mut i = home;
        loop {
            let word = self.slots[i];
            if word == 0 {
                self.slots[i] = (key << FLAG_BITS) | u64::from(flags);
                self.len += 1;
                return flags;
            }
            if word >> FLAG_BITS == key {
                self.slots[i] = word | u64::from(flags);
                return flags & !(word as u8);
            }
            i = (i + 1) & mask;
        }
    }

    /// Puts a word known to be absent in the first free slot from `home`.
    fn place(&mut self, home: usize, word: u64) {
        let mask = self.slots.len() - 1;
        let mut i = home;
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = word;
        self.len += 1;
    }

    /// Keeps the words for which `keep` returns true, after it has changed
    /// them as it likes (it must not clear a kept word's flags or change
    /// its key). The table is rebuilt at the size the kept words need.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut u64) -> bool) {
        let mut kept = 0;
        for word in self.slots.iter_mut().filter(|w| **w != 0) {
            if keep(word) {
                kept += 1;
            } else {
                *word = 0;
            }
        }
        let old = std::mem::replace(&mut self.slots, Slots::empty());
        self.len = 0;
        if kept == 0 {
            return;
        }
        self.reserve(kept);
        self.move_in(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Against a map: flags accumulate per key, `insert` reports only the
    /// new ones, growth and `retain` keep every other word where it can be
    /// found, and colliding keys (a tiny table fills its probe runs) are
    /// told apart. Its 15,009 keys grow the table to 256 KiB, mapped on its
    /// own, so `retain`'s move discards the old table's pages as it goes.
    #[test]
    fn words_keep_their_flags_through_growth_and_retain() {
        let mut set = WordSet::new();
        let mut expected: HashMap<u64, u8> = HashMap::new();
        for i in 0..20_000u64 {
            let key = (i * 7919) % 5_003 + (i % 3) * (1 << 40);
            let flags = 1u8 << (i % 5);
            set.reserve(1);
            let home = set.home(key);
            let new = set.insert(home, key, flags);
            let was = expected.entry(key).or_insert(0);
            assert_eq!(new, flags & !*was, "key {key}");
            *was |= flags;
        }
        assert!(set.capacity() * 3 >= set.len * 4);
        set.retain(|w| {
            *w &= !1;
            *w as u8 != 0
        });
        expected.retain(|_, f| {
            *f &= !1;
            *f != 0
        });
        assert_eq!(set.len, expected.len());
        for (&key, &flags) in &expected {
            set.reserve(1);
            let home = set.home(key);
            assert_eq!(set.insert(home, key, flags), 0, "key {key} kept its flags");
        }
        assert_eq!(set.len, expected.len(), "no key was added twice");
    }

    /// Minor page faults of this thread so far.
    #[cfg(target_os = "linux")]
    fn faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid `who` and a pointer to a live struct.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        usage.ru_minflt
    }

    /// Growing moves the words into a table whose pages are each faulted
    /// in once (about one fault per 4 KiB of the new table), not twice.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_move_faults_each_page_of_the_new_table_in_once() {
        let mut set = WordSet::new();
        // 2^18 slots (2 MiB) hold up to 196,608 words at 6/8.
        set.reserve(190_000);
        assert_eq!(set.capacity(), 1 << 18);
        for key in 1..=190_000u64 {
            let home = set.home(key);
            set.insert(home, key, 1);
        }
        // Twice as large, then four times (four stretches of the old one).
        for (more, grown) in [(200_000, 1 << 19), (1_200_000, 1 << 21)] {
            let before = faults();
            set.reserve(more);
            let taken = faults() - before;
            assert_eq!(set.capacity(), grown);
            let pages = (grown * 8 / 4096) as i64;
            assert!(
                taken >= pages / 2 && taken <= pages + pages / 8,
                "{taken} faults for {pages} pages"
            );
        }
        for key in 1..=190_000u64 {
            set.reserve(1);
            let home = set.home(key);
            assert_eq!(set.insert(home, key, 1), 0, "key {key} is still there");
        }
    }
}
