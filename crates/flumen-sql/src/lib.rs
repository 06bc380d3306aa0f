//! From SQL scripts to job graphs. DataFusion parses and plans every
//! statement against a catalogue of connector tables; flumen keeps the
//! tables' connector options and turns each optimised `INSERT` or `SELECT`
//! plan into nodes of one [`flumen_runtime::JobGraph`].

#![warn(missing_docs)]

mod case_lookup;
mod catalog;
mod date_format;
mod errors;
mod group_windows;
mod if_function;
mod planner;
mod regexp_extract;
mod repeated_names;
mod script;
mod shared_regex;
mod sql_ast;
mod text_memo;
mod time_shift;
mod timestamp_units;
mod to_char;
mod tvf;
mod udf;
mod watermark;

pub use planner::{Pipeline, Planner, PlannerOptions, new_job_id, session};
pub use script::{duration_nanos, strip_table_arguments};
pub use tvf::expand_window_functions;
pub use udf::udfs;
