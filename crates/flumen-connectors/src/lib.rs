//! Connectors: where a job's rows come from and go to. Each connector is a
//! module with one [`Connector`], registered in [`connectors`];
//! [`source_factory`] and [`sink_factory`] pick one by the table's
//! `connector` option, after [`check_table`] has validated its options.

#![warn(missing_docs)]

mod bad_data;
mod blackhole;
mod clocks;
pub mod filesystem;
mod format;
mod guarantee;
pub mod kafka;
mod lookup;
mod metadata;
pub mod mqtt;
pub mod nats;
pub mod nexmark;
mod options;
mod payloads;
pub mod postgres;
mod ready;
pub mod redis;
mod stdout;
mod throttle;

use std::sync::Arc;

use arrow::datatypes::{Field, SchemaRef};
use flumen_runtime::{LookupFactory, SinkFactory, SourceFactory};
use flumen_types::{FlumenError, Result};

pub use blackhole::BlackholeSinkFactory;
pub use lookup::{lookup_cache, lookup_factory};
pub use options::{OptionSpec, OptionValue, Options};
pub use stdout::{StdoutFormat, StdoutSinkFactory};

/// What a sink promises about each row it is given, with checkpoints on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Committed once, even across failures: staged at a barrier, made
    /// visible when the checkpoint completes.
    ExactlyOnce,
    /// Written at least once: a restart may write again what followed the
    /// last checkpoint.
    AtLeastOnce,
}

/// One kind of external system a table can live in: its options, how to
/// read and write it, and what its sink guarantees. Each connector module
/// has one, listed in [`connectors`].
#[async_trait::async_trait]
pub trait Connector: Send + Sync {
    /// The `connector` option that names it.
    fn name(&self) -> &'static str;
    /// The `WITH` options it takes, with their docs.
    fn options(&self) -> &'static [OptionSpec];
    /// Whether tables of it can be read.
    fn reads(&self) -> bool {
        false
    }
    /// What its sink guarantees; `None` if tables of it cannot be written.
    fn delivery(&self) -> Option<Delivery> {
        None
    }
    /// Whether its tables' payloads are in a message format (`format`:
    /// json, csv, raw, avro, avro-confluent, debezium-json), which brings
    /// the formats' own options and, with debezium-json, updating streams.
    fn formats_messages(&self) -> bool {
        false
    }
    /// Whether a sink of this table takes an updating stream: with a
    /// message format, when it is debezium-json (written as change events).
    fn accepts_updates(&self, spec: &TableSpec) -> bool {
        self.formats_messages() && format::is_changelog_table(spec)
    }
    /// The columns that identify a row of this table's sink, by which an
    /// updating result is shuffled so that one subtask applies all of a
    /// key's changes in order: the primary key unless the connector keys
    /// its writes otherwise.
    fn upsert_key(&self, spec: &TableSpec) -> Vec<String> {
        spec.primary_key.clone()
    }
    /// Whether its source reads this table as an updating stream (change
    /// events, `format = 'debezium-json'`), its rows followed by the op
    /// column.
    fn produces_updates(&self, spec: &TableSpec) -> bool {
        self.formats_messages() && format::is_changelog_table(spec)
    }
    /// The metadata its source can fill columns from
    /// (`col BIGINT METADATA FROM 'offset'`), with their types and docs.
    fn metadata(&self) -> &'static [OptionSpec] {
        &[]
    }
    /// The metadata its sink writes from columns (Kafka: `headers`,
    /// `timestamp`); other metadata columns make a table read-only.
    fn writable_metadata(&self) -> &'static [&'static str] {
        &[]
    }
    /// Checks the table's options beyond their names (a value only this
    /// connector understands), when the table is declared.
    fn check(&self, _spec: &TableSpec) -> Result<()> {
        Ok(())
    }
    /// Checks a declared payload column (not a METADATA one) against what
    /// the connector can fill it with, when the table is declared: a
    /// connector with a fixed schema refuses a column it does not have or
    /// would have to change the values of.
    fn check_column(&self, _spec: &TableSpec, _column: &Field) -> Result<()> {
        Ok(())
    }
    /// A source reading `spec`, producing only the `projection` columns.
    async fn source(
        &self,
        spec: &TableSpec,
        _projection: Option<&[usize]>,
    ) -> Result<Arc<dyn SourceFactory>> {
        Err(FlumenError::plan(format!(
            "table '{}' uses connector '{}', which cannot be read; readable connectors: {}",
            spec.name,
            self.name(),
            names(|c| c.reads())
        )))
    }
    /// Whether tables of it can be looked up by key (the table side of a
    /// lookup join); such tables also take the `lookup.*` options.
    fn looks_up(&self) -> bool {
        false
    }
    /// A lookup of `spec`'s rows by its columns `keys`, returning its
    /// `projection` columns.
    async fn lookup(
        &self,
        spec: &TableSpec,
        _projection: &[usize],
        _keys: &[usize],
    ) -> Result<Arc<dyn LookupFactory>> {
        Err(FlumenError::plan(format!(
            "table '{}' uses connector '{}', which cannot be looked up; lookup connectors: {}",
            spec.name,
            self.name(),
            names(|c| c.looks_up())
        )))
    }
    /// A sink writing rows of `input` into `spec`; `unique` names its output
    /// apart from other sinks' and jobs'.
    fn sink(
        &self,
        spec: &TableSpec,
        _input: SchemaRef,
        _unique: &str,
    ) -> Result<Arc<dyn SinkFactory>> {
        Err(FlumenError::plan(format!(
            "table '{}' uses connector '{}', which cannot be written; writable connectors: {}",
            spec.name,
            self.name(),
            names(|c| c.delivery().is_some())
        )))
    }
}

/// Every connector: one line each.
pub fn connectors() -> &'static [&'static dyn Connector] {
    &[
        &nexmark::Nexmark,
        &filesystem::Filesystem,
        &stdout::Stdout,
        &blackhole::Blackhole,
        &postgres::Postgres,
        &kafka::Kafka,
        &nats::Nats,
        &redis::Redis,
        &mqtt::Mqtt,
    ]
}

/// The connector called `name`.
pub fn connector(name: &str) -> Option<&'static dyn Connector> {
    connectors().iter().copied().find(|c| c.name() == name)
}

fn names(filter: impl Fn(&dyn Connector) -> bool) -> String {
    connectors()
        .iter()
        .filter(|c| filter(**c))
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table declared with `CREATE TABLE … WITH (…)`.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The table's name.
    pub name: String,
    /// Its declared columns.
    pub schema: SchemaRef,
    /// Its `WITH` options, `connector` included.
    pub options: Options,
    /// Its `PRIMARY KEY` columns, if it declares one (a sink then applies
    /// an updating stream by key).
    pub primary_key: Vec<String>,
    /// Its metadata columns: (column, metadata key), filled by the source
    /// from each message's metadata instead of its payload.
    pub metadata: Vec<(String, String)>,
}

impl TableSpec {
    /// The `connector` option.
    pub fn connector(&self) -> &str {
        self.options.get("connector").unwrap_or_default()
    }
}

/// The subtask of `parallelism` that reads the split named `name` (a NATS
/// subject, an MQTT topic filter): by its hash, so a split finds the same
/// owner whenever the job runs at that parallelism.
pub(crate) fn split_owner(name: &str, parallelism: usize) -> usize {
    (twox_hash::XxHash64::oneshot(0, name.as_bytes()) % parallelism.max(1) as u64) as usize
}

/// The columns named by option `key.fields` (separated by `;` or `,`), or
/// else the primary key.
pub(crate) fn key_fields(spec: &TableSpec) -> Vec<String> {
    match spec.options.get("key.fields") {
        Some(list) => list
            .split([';', ','])
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect(),
        None => spec.primary_key.clone(),
    }
}

/// The column names of `schema`, comma-separated, for `explain`.
pub(crate) fn column_list(schema: &SchemaRef) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names.join(", ")
}

/// Checks that the table names a known connector and only options it takes.
pub fn check_table(spec: &TableSpec) -> Result<()> {
    let Some(name) = spec.options.get("connector") else {
        return Err(FlumenError::config(format!(
            "table '{}' has no connector option; valid connectors: {}",
            spec.name,
            names(|_| true)
        )));
    };
    let Some(connector) = connector(name) else {
        return Err(FlumenError::config(format!(
            "table '{}': unknown connector '{name}'; valid connectors: {}",
            spec.name,
            names(|_| true)
        )));
    };
    let mut options = connector.options().to_vec();
    if connector.looks_up() {
        options.extend_from_slice(lookup::OPTIONS);
    }
    if connector.formats_messages() {
        options.extend_from_slice(format::OPTIONS);
    }
    spec.options
        .check(name, &options)
        .map_err(|e| FlumenError::config(format!("table '{}': {e}", spec.name)))?;
    if connector.produces_updates(spec)
        && let Some((column, _)) = spec.metadata.first()
    {
        return Err(FlumenError::config(format!(
            "table '{}': column '{column}' is a METADATA column, which a table of change events (format 'debezium-json') cannot have yet",
            spec.name
        )));
    }
    for (column, key) in &spec.metadata {
        if !connector.metadata().iter().any(|m| m.name == key.as_str()) {
            let valid: Vec<String> = connector
                .metadata()
                .iter()
                .map(|m| format!("{} ({})", m.name, m.help))
                .collect();
            return Err(FlumenError::config(format!(
                "table '{}': column '{column}' reads metadata '{key}', which connector '{name}' does not have; {}",
                spec.name,
                if valid.is_empty() {
                    "it has no metadata".to_string()
                } else {
                    format!("its metadata: {}", valid.join(", "))
                }
            )));
        }
    }
    connector.check(spec)
}

/// Checks `column`, a payload column of the table `spec` that
/// [`check_table`] accepted, against its connector (see
/// [`Connector::check_column`]).
pub fn check_column(spec: &TableSpec, column: &Field) -> Result<()> {
    connector_of(spec)?
        .check_column(spec, column)
        .map_err(|e| match e {
            FlumenError::Config(m) => FlumenError::config(format!("table '{}': {m}", spec.name)),
            other => other,
        })
}

fn connector_of(spec: &TableSpec) -> Result<&'static dyn Connector> {
    connector(spec.connector()).ok_or_else(|| {
        FlumenError::config(format!(
            "table '{}': unknown connector '{}'",
            spec.name,
            spec.connector()
        ))
    })
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
    connector_of(spec)?
        .source(spec, projection)
        .await
        .map_err(in_table)
}

/// Whether a sink of this table takes an updating stream (rows tagged
/// insert / delete / update).
pub fn accepts_updates(spec: &TableSpec) -> bool {
    connector(spec.connector()).is_some_and(|c| c.accepts_updates(spec))
}

/// The columns by which an updating result is shuffled before this
/// table's sink (see [`Connector::upsert_key`]); none: no shuffle.
pub fn upsert_key(spec: &TableSpec) -> Vec<String> {
    connector(spec.connector()).map_or_else(Vec::new, |c| c.upsert_key(spec))
}

/// Whether a source of this table gives an updating stream (rows tagged
/// insert / delete / update, in the op column after the table's columns).
pub fn produces_updates(spec: &TableSpec) -> bool {
    connector(spec.connector()).is_some_and(|c| c.produces_updates(spec))
}

/// A sink writing rows of `input` into `spec`; `unique` names its files apart
/// from other sinks' and jobs'.
pub fn sink_factory(
    spec: &TableSpec,
    input: SchemaRef,
    unique: &str,
) -> Result<Arc<dyn SinkFactory>> {
    let connector = connector_of(spec)?;
    let writable = connector.writable_metadata();
    if let Some((column, key)) = spec
        .metadata
        .iter()
        .find(|(_, key)| !writable.contains(&key.as_str()))
    {
        return Err(FlumenError::plan(format!(
            "table '{}' is written, but its column '{column}' is a METADATA column ('{key}'), which connector '{}' only reads; {}",
            spec.name,
            connector.name(),
            if writable.is_empty() {
                "write to a table declared without metadata columns".to_string()
            } else {
                format!("it writes metadata {}", writable.join(", "))
            }
        )));
    }
    connector.sink(spec, input, unique)
}
