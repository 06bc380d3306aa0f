//! Connectors: where a job's rows come from and go to. Each connector is a
//! module; [`source_factory`] and [`sink_factory`] pick one by the table's
//! `connector` option, after [`check_table`] has validated its options.

#![warn(missing_docs)]

mod blackhole;
pub mod filesystem;
pub mod nexmark;
mod options;
mod stdout;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use flumen_runtime::{SinkFactory, SourceFactory};
use flumen_types::{FlumenError, Result};

pub use blackhole::BlackholeSinkFactory;
pub use options::{OptionSpec, Options};
pub use stdout::{StdoutFormat, StdoutSinkFactory};

/// Every connector, with whether it reads, writes, and the options it takes.
pub const CONNECTORS: &[(&str, bool, bool, &[OptionSpec])] = &[
    ("nexmark", true, false, nexmark::OPTIONS),
    ("filesystem", true, true, filesystem::OPTIONS),
    ("stdout", false, true, stdout::OPTIONS),
    ("blackhole", false, true, &[]),
];

/// A table declared with `CREATE TABLE … WITH (…)`.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The table's name.
    pub name: String,
    /// Its declared columns.
    pub schema: SchemaRef,
    /// Its `WITH` options, `connector` included.
    pub options: Options,
}

impl TableSpec {
    /// The `connector` option.
    pub fn connector(&self) -> &str {
        self.options.get("connector").unwrap_or_default()
    }
}

/// The column names of `schema`, comma-separated, for `explain`.
pub(crate) fn column_list(schema: &SchemaRef) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names.join(", ")
}

fn connector_names() -> String {
    CONNECTORS
        .iter()
        .map(|c| c.0)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that the table names a known connector and only options it takes.
pub fn check_table(spec: &TableSpec) -> Result<()> {
    let Some(connector) = spec.options.get("connector") else {
        return Err(FlumenError::config(format!(
            "table '{}' has no connector option; valid connectors: {}",
            spec.name,
            connector_names()
        )));
    };
    let Some((_, _, _, specs)) = CONNECTORS.iter().find(|c| c.0 == connector) else {
        return Err(FlumenError::config(format!(
            "table '{}': unknown connector '{connector}'; valid connectors: {}",
            spec.name,
            connector_names()
        )));
    };
    spec.options
        .check(connector, specs)
        .map_err(|e| FlumenError::config(format!("table '{}': {e}", spec.name)))
}

/// A source reading `spec`, producing only the `projection` columns.
pub async fn source_factory(
    spec: &TableSpec,
    projection: Option<&[usize]>,
) -> Result<Arc<dyn SourceFactory>> {
    let in_table = |e: FlumenError| match e {
        FlumenError::Config(m) => FlumenError::config(format!("table '{}': {m}", spec.name)),
        other => other,
    };
    Ok(match spec.connector() {
        "nexmark" => Arc::new(
            nexmark::NexmarkSourceFactory::try_new(&spec.options, &spec.schema, projection)
                .map_err(in_table)?,
        ),
        "filesystem" => Arc::new(
            filesystem::FileSourceFactory::try_new(&spec.options, &spec.schema, projection)
                .await
                .map_err(in_table)?,
        ),
        other => {
            return Err(FlumenError::plan(format!(
                "table '{}' uses connector '{other}', which cannot be read; readable connectors: {}",
                spec.name,
                readable(true)
            )));
        }
    })
}

fn readable(read: bool) -> String {
    CONNECTORS
        .iter()
        .filter(|c| if read { c.1 } else { c.2 })
        .map(|c| c.0)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a sink of this table takes an updating stream (rows tagged
/// insert / delete / update): stdout and blackhole do, a filesystem sink does
/// when it writes the changelog (`changelog = 'true'`); others only append.
pub fn accepts_updates(spec: &TableSpec) -> bool {
    match spec.connector() {
        "stdout" | "blackhole" => true,
        "filesystem" => spec.options.get("changelog") == Some("true"),
        _ => false,
    }
}

/// A sink writing rows of `input` into `spec`; `unique` names its files apart
/// from other sinks' and runs'.
pub fn sink_factory(
    spec: &TableSpec,
    input: SchemaRef,
    unique: &str,
) -> Result<Arc<dyn SinkFactory>> {
    Ok(match spec.connector() {
        "filesystem" => Arc::new(filesystem::FileSinkFactory::try_new(
            &spec.options,
            input,
            unique,
        )?),
        "stdout" => Arc::new(StdoutSinkFactory::from_options(&spec.options)?),
        "blackhole" => Arc::new(BlackholeSinkFactory),
        other => {
            return Err(FlumenError::plan(format!(
                "table '{}' uses connector '{other}', which cannot be written; writable connectors: {}",
                spec.name,
                readable(false)
            )));
        }
    })
}
