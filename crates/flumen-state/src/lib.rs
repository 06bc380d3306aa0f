//! Keyed state of operator subtasks. Keys hash into a fixed number of key
//! groups (the job's max parallelism) with the same hash the exchanges route
//! by; a subtask owns a contiguous range of them. State tables remember the
//! key group of each entry, and a [`StateSnapshot`] holds an operator's state
//! split by key group, so a subtask at any parallelism can take up exactly
//! the key groups it owns. [`checkpoint`] stores snapshots, source positions
//! and manifests in an object store.

pub mod checkpoint;
pub mod chunk_copy;
mod fixed_keys;
mod key_group;
mod keyed_table;
mod local_file;
mod location;
pub mod probing;
mod snapshot;
pub mod string_take;

pub use key_group::{
    KeyGroup, KeyGroupRange, KeyGroups, MAX_KEY_GROUPS, hash_keys, key_group_for_hash,
    subtask_for_key_group,
};
pub use keyed_table::KeyedTable;
pub use local_file::LocalFile;
pub use location::{Location, S3Settings};
pub use snapshot::{KEY_GROUP_COLUMN, StateSnapshot, gather_parts, state_column};
