//! The `filesystem` connector: reads and writes JSON lines, CSV and Parquet
//! files in a local directory or an object store.

mod sink;
mod source;

pub use sink::FileSinkFactory;
pub use source::FileSourceFactory;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use flumen_runtime::{SinkFactory, SourceFactory};
use flumen_types::Result;

use crate::options::OptionSpec;
use crate::{Delivery, TableSpec};

/// The `filesystem` connector: reads and writes; its sink commits exactly
/// once with checkpoints on.
pub(crate) struct Filesystem;

#[async_trait]
impl crate::Connector for Filesystem {
    fn name(&self) -> &'static str {
        "filesystem"
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    fn reads(&self) -> bool {
        true
    }
    fn delivery(&self) -> Option<Delivery> {
        Some(Delivery::ExactlyOnce)
    }
    /// With `changelog = 'true'` it writes an updating result as rows with an `_op` column.
    fn accepts_updates(&self, spec: &TableSpec) -> bool {
        spec.options.get("changelog") == Some("true")
    }
    async fn source(
        &self,
        spec: &TableSpec,
        projection: Option<&[usize]>,
    ) -> Result<Arc<dyn SourceFactory>> {
        Ok(Arc::new(
            FileSourceFactory::try_new(&spec.options, &spec.schema, projection).await?,
        ))
    }
    fn sink(
        &self,
        spec: &TableSpec,
        input: SchemaRef,
        unique: &str,
    ) -> Result<Arc<dyn SinkFactory>> {
        Ok(Arc::new(FileSinkFactory::try_new(
            &spec.options,
            input,
            unique,
        )?))
    }
}

/// Options of the `filesystem` connector.
pub(crate) const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required(
        "path",
        "a file or directory: local path or object-store URL",
    ),
    OptionSpec::required("format", "json, csv or parquet"),
    crate::bad_data::OPTIONS[0],
    crate::bad_data::OPTIONS[1],
    OptionSpec::optional(
        "header",
        "csv: whether the first line names the columns (default true)",
    ),
    OptionSpec::optional(
        "changelog",
        "sink: true to write an updating result as rows with an _op column (default false)",
    ),
    crate::throttle::ROWS_PER_SECOND,
    crate::options::IDLE_TIMEOUT,
    crate::options::ALLOWED_LATENESS,
    OptionSpec::optional(
        "rolling_size",
        "sink: bytes after which a new file starts (default 134217728)",
    ),
];

/// File formats the connector reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Csv,
    Parquet,
}

impl Format {
    pub(crate) fn parse(options: &crate::Options) -> flumen_types::Result<Self> {
        Ok(
            match options.choice("format", &["json", "csv", "parquet"], "json")? {
                "csv" => Format::Csv,
                "parquet" => Format::Parquet,
                _ => Format::Json,
            },
        )
    }

    pub(crate) fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}
