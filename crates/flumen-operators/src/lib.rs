//! Streaming operators. Each works on whole Arrow batches with DataFusion's
//! vectorised expression evaluation; one operator per module.

#![warn(missing_docs)]

mod filter;
mod projection;
mod unnest;
mod window_aggregate;

pub use filter::FilterFactory;
pub use projection::ProjectionFactory;
pub use unnest::UnnestFactory;
pub use window_aggregate::{AggregateCall, WindowAggregateFactory};
