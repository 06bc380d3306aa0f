//! The results of an expensive pure function of a string (a regular
//! expression's match) for the strings seen lately, so that a column of
//! repeating values — URLs, user agents, channel names, as event streams
//! carry them — pays for the function once per distinct value, and then a
//! hash and a comparison per row. Direct-mapped: a string's hash picks its
//! one slot, and a new string takes the slot over. A memo that finds few
//! repeats switches itself off for a while, so a column of unique strings
//! pays for it only in the batches where it looks.

use std::hash::BuildHasher;

/// Slots of a memo (a power of two).
const SLOTS: usize = 1 << 14;

/// Longer strings are neither looked up nor kept.
const MAX_TEXT: usize = 256;

/// Lookups after which a memo judges whether it pays.
const JUDGED_AFTER: usize = 4_096;

/// A memo pays when at least this share of its lookups hit.
const MIN_HIT_SHARE: f64 = 0.25;

/// Lookups a memo that did not pay sits out before it looks again.
const OFF_FOR: usize = 65_536;

/// One remembered string and its result.
struct Entry<T> {
    hash: u64,
    text: Box<str>,
    result: T,
}

/// Results of a function by string, for the strings seen lately, its
/// slots picked by hashes of `S`.
pub(crate) struct TextMemo<T, S = foldhash::fast::FixedState> {
    slots: Vec<Option<Entry<T>>>,
    hasher: S,
    /// Lookups and hits since the memo last judged itself.
    lookups: usize,
    hits: usize,
    /// Lookups left to sit out.
    off: usize,
}

impl<T: Copy> TextMemo<T> {
    /// An empty memo.
    pub(crate) fn new() -> Self {
        Self::with_hasher(foldhash::fast::FixedState::with_seed(0x9e37_79b9_7f4a_7c15))
    }
}

impl<T: Copy, S: BuildHasher> TextMemo<T, S> {
    /// An empty memo hashing with `hasher`.
    fn with_hasher(hasher: S) -> Self {
        TextMemo {
            slots: Vec::new(),
            hasher,
            lookups: 0,
            hits: 0,
            off: 0,
        }
    }

    /// `compute(text)`, remembered or computed (and then remembered).
    #[inline]
    pub(crate) fn get(&mut self, text: &str, compute: impl FnOnce(&str) -> T) -> T {
        if self.off > 0 {
            self.off -= 1;
            return compute(text);
        }
        if text.len() > MAX_TEXT {
            return compute(text);
        }
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        self.lookups += 1;
        let hash = self.hasher.hash_one(text.as_bytes());
        let slot = &mut self.slots[hash as usize & (SLOTS - 1)];
        if let Some(entry) = slot
            && entry.hash == hash
            && *entry.text == *text
        {
            self.hits += 1;
            return entry.result;
        }
        let result = compute(text);
        *slot = Some(Entry {
            hash,
            text: text.into(),
            result,
        });
        if self.lookups == JUDGED_AFTER {
            if (self.hits as f64) < MIN_HIT_SHARE * self.lookups as f64 {
                self.off = OFF_FOR;
                self.slots = Vec::new();
            }
            (self.lookups, self.hits) = (0, 0);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repeating strings are computed once each; what comes back is what
    /// the function gives, whatever the memo holds.
    #[test]
    fn repeats_are_computed_once_and_results_are_the_functions() {
        let mut memo = TextMemo::new();
        let mut calls = 0;
        let texts: Vec<String> = (0..100).map(|i| format!("text {i}")).collect();
        for round in 0..50 {
            for t in &texts {
                let got = memo.get(t, |s| {
                    calls += 1;
                    s.len()
                });
                assert_eq!(got, t.len(), "round {round}");
            }
        }
        assert_eq!(calls, 100, "each distinct string once");
        let long = "x".repeat(MAX_TEXT + 1);
        for _ in 0..3 {
            assert_eq!(memo.get(&long, |s| s.len()), MAX_TEXT + 1);
        }
    }

    /// A hasher giving every string the same hash.
    #[derive(Default)]
    struct Constant;

    impl std::hash::Hasher for Constant {
        fn finish(&self) -> u64 {
            7
        }

        fn write(&mut self, _bytes: &[u8]) {}
    }

    /// Strings with one hash replace each other in their slot and still
    /// get their own results.
    #[test]
    fn strings_of_one_hash_get_their_own_results() {
        let mut memo = TextMemo::with_hasher(std::hash::BuildHasherDefault::<Constant>::default());
        let number = |s: &str| s[1..].parse::<u64>().unwrap();
        for _ in 0..3 {
            for text in ["a0", "a1", "a1", "a22"] {
                assert_eq!(memo.get(text, number), number(text));
            }
        }
    }

    /// A column of unique strings turns the memo off, and it looks again
    /// later.
    #[test]
    fn unique_strings_turn_the_memo_off_for_a_while() {
        let mut memo = TextMemo::new();
        let mut calls = 0;
        for i in 0..JUDGED_AFTER {
            memo.get(&format!("u{i}"), |_| calls += 1);
        }
        assert_eq!(memo.off, OFF_FOR);
        assert!(memo.slots.is_empty(), "its strings are given back");
        for _ in 0..OFF_FOR {
            memo.get("same", |_| calls += 1);
        }
        assert_eq!(calls, JUDGED_AFTER + OFF_FOR, "not remembered while off");
        memo.get("same", |_| calls += 1);
        memo.get("same", |_| calls += 1);
        assert_eq!(calls, JUDGED_AFTER + OFF_FOR + 1, "remembered again");
    }
}
