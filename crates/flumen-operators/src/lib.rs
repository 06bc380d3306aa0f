//! Streaming operators. Each works on whole Arrow batches with DataFusion's
//! vectorised expression evaluation; one operator per module.

#![warn(missing_docs)]

mod accumulator_layers;
mod columns;
mod filter;
mod growing_buffer;
mod hash_heads;
mod int_aggregates;
mod join;
mod kept_rows;
mod key_columns;
mod key_order;
mod limit;
mod local_aggregate;
mod lookup_join;
mod open_table;
mod projection;
mod retract_top_n;
mod session_aggregate;
mod shared_distinct;
mod slots;
mod stored_column;
mod string_dictionary;
mod string_groups;
mod top_n;
mod union;
mod unnest;
mod updating_aggregate;
mod window_aggregate;
mod word_set;

pub use filter::{FilterFactory, on_used_columns};
pub use join::{Expiry, HashJoinFactory, JoinKind, JoinSide};
pub use limit::LimitFactory;
pub use local_aggregate::{LocalAggregateFactory, PartialRows};
pub use lookup_join::LookupJoinFactory;
pub use projection::ProjectionFactory;
pub use session_aggregate::{SessionAggregateFactory, SessionColumn};
pub use top_n::{RankFunction, TopNFactory, TopNWindow};
pub use union::UnionFactory;
pub use unnest::UnnestFactory;
pub use updating_aggregate::{RETRACTABLE, UpdatingAggregateFactory};
pub use window_aggregate::{AggregateCall, Panes, WindowAggregateFactory};
