//! Streaming operators. Each works on whole Arrow batches with DataFusion's
//! vectorised expression evaluation; one operator per module.

#![warn(missing_docs)]

mod filter;
mod projection;
mod tumbling_window_aggregate;

pub use filter::FilterFactory;
pub use projection::ProjectionFactory;
pub use tumbling_window_aggregate::{TumblingWindowAggregateFactory, WindowAggregate};
