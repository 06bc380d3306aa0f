//! Key groups: the unit in which keyed state is owned, stored and moved.

use arrow::array::ArrayRef;
use datafusion_common::hash_utils::{RandomState, create_hashes};
use flumen_types::{FlumenError, Result};

/// Fixed seed so that every process maps a key to the same key group.
const HASH_STATE: RandomState = RandomState::with_seed(0x5eed_f105);

/// A key group, in `0..max_parallelism`.
pub type KeyGroup = u16;

/// The largest max parallelism: key groups are stored as `u16`.
pub const MAX_KEY_GROUPS: usize = 1 << 15;

/// One hash per row of the key columns `keys`, with the seed that exchanges
/// and state tables share, into `hashes` (cleared first).
pub fn hash_keys(keys: &[ArrayRef], rows: usize, hashes: &mut Vec<u64>) -> Result<()> {
    hashes.clear();
    hashes.resize(rows, 0);
    create_hashes(keys, &HASH_STATE, hashes)
        .map_err(|e| FlumenError::execution(format!("hashing keys: {e}")))?;
    Ok(())
}

/// The key group (in `0..max_parallelism`) of a key hash.
pub fn key_group_for_hash(hash: u64, max_parallelism: usize) -> KeyGroup {
    // Mix the hash once more so that key groups are uniform even when the
    // low bits of the hash are not.
    let mixed = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    let max = max_parallelism as u64;
    // The same remainder; a mask where it can be (the default 128), as a
    // division per row is most of what routing a row costs.
    (if max.is_power_of_two() {
        mixed & (max - 1)
    } else {
        mixed % max
    }) as KeyGroup
}

/// The subtask (in `0..parallelism`) owning `key_group`: each subtask owns a
/// contiguous range of key groups, so state can be redistributed on rescale.
pub fn subtask_for_key_group(
    key_group: KeyGroup,
    max_parallelism: usize,
    parallelism: usize,
) -> usize {
    usize::from(key_group) * parallelism / max_parallelism
}

/// The key groups `start..end` one subtask owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGroupRange {
    /// First key group owned.
    pub start: KeyGroup,
    /// One past the last key group owned.
    pub end: KeyGroup,
}

impl KeyGroupRange {
    /// Every key group there can be: what a restore reads of a table every
    /// subtask holds whole.
    pub const ALL: KeyGroupRange = KeyGroupRange {
        start: 0,
        end: MAX_KEY_GROUPS as KeyGroup,
    };

    /// The range [`subtask_for_key_group`] gives `subtask`: the key groups
    /// `kg` with `kg * parallelism / max_parallelism == subtask`.
    pub fn of_subtask(subtask: usize, parallelism: usize, max_parallelism: usize) -> Self {
        let first = |s: usize| (s * max_parallelism).div_ceil(parallelism) as KeyGroup;
        KeyGroupRange {
            start: first(subtask),
            end: first(subtask + 1),
        }
    }

    /// Whether `key_group` is in the range.
    pub fn contains(&self, key_group: KeyGroup) -> bool {
        (self.start..self.end).contains(&key_group)
    }
}

/// How one subtask's keys map to key groups, and which of them it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGroups {
    /// Number of key groups of the job.
    pub max_parallelism: usize,
    /// The key groups this subtask owns.
    pub range: KeyGroupRange,
}

impl KeyGroups {
    /// The key groups of `subtask` of `parallelism` subtasks.
    pub fn of_subtask(subtask: usize, parallelism: usize, max_parallelism: usize) -> Self {
        KeyGroups {
            max_parallelism,
            range: KeyGroupRange::of_subtask(subtask, parallelism, max_parallelism),
        }
    }

    /// The key group of each row of `keys` into `groups` (cleared first);
    /// `hashes` is scratch space.
    pub fn assign(
        &self,
        keys: &[ArrayRef],
        rows: usize,
        hashes: &mut Vec<u64>,
        groups: &mut Vec<KeyGroup>,
    ) -> Result<()> {
        hash_keys(keys, rows, hashes)?;
        groups.clear();
        groups.extend(
            hashes
                .iter()
                .map(|&h| key_group_for_hash(h, self.max_parallelism)),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask for a power-of-two max parallelism gives the remainder:
    /// key groups in checkpoints taken before it stay where they were.
    #[test]
    fn key_groups_are_the_remainder_of_the_mixed_hash() {
        for max in [1usize, 2, 7, 128, 1000, 32768] {
            for i in 0..10_000u64 {
                let hash = i.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ (i << 7);
                let mixed = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
                assert_eq!(
                    u64::from(key_group_for_hash(hash, max)),
                    mixed % max as u64,
                    "max {max}"
                );
            }
        }
    }

    #[test]
    fn ranges_are_what_the_exchange_routes_to() {
        for max in [1, 7, 128, 1000] {
            for parallelism in 1..=max.min(9) {
                let ranges: Vec<_> = (0..parallelism)
                    .map(|s| KeyGroupRange::of_subtask(s, parallelism, max))
                    .collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(usize::from(ranges[parallelism - 1].end), max);
                for kg in 0..max as KeyGroup {
                    let owner = subtask_for_key_group(kg, max, parallelism);
                    for (s, range) in ranges.iter().enumerate() {
                        assert_eq!(range.contains(kg), s == owner, "kg {kg} p {parallelism}");
                    }
                }
            }
        }
    }

    #[test]
    fn keys_spread_over_all_key_groups() {
        let keys: ArrayRef =
            std::sync::Arc::new(arrow::array::Int64Array::from_iter_values(0..10_000));
        let groups = KeyGroups::of_subtask(0, 1, 128);
        let (mut hashes, mut assigned) = (Vec::new(), Vec::new());
        groups
            .assign(&[keys], 10_000, &mut hashes, &mut assigned)
            .unwrap();
        let mut counts = [0usize; 128];
        for kg in assigned {
            counts[usize::from(kg)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 40 && c < 120), "{counts:?}");
    }
}
