//! The `filesystem` connector: reads and writes JSON lines, CSV and Parquet
//! files in a local directory or an object store.

mod dictionary_choice;
mod output;
mod parquet_file;
mod partition;
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
use crate::{Delivery, Options, TableSpec};
use flumen_state::{Location, S3Settings};

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
    OptionSpec::optional(
        "parquet.compression",
        "parquet sink: uncompressed, snappy, gzip, lz4 or zstd (default snappy)",
    ),
    OptionSpec::optional(
        "partition_by",
        "columns (a, b) whose values name the directories rows go to, Hive-style: path/a=1/b=x/; they are left out of the files and read back from the directory names (default none)",
    ),
    OptionSpec::optional(
        "s3.endpoint",
        "s3:// paths: endpoint URL of an S3-compatible server (default AWS_ENDPOINT_URL, else AWS)",
    ),
    OptionSpec::optional(
        "s3.region",
        "s3:// paths: region (default AWS_REGION, else us-east-1)",
    ),
    OptionSpec::optional(
        "s3.access-key",
        "s3:// paths: access key id (default AWS_ACCESS_KEY_ID)",
    ),
    OptionSpec::optional(
        "s3.secret-key",
        "s3:// paths: secret access key, never printed (default AWS_SECRET_ACCESS_KEY)",
    ),
    OptionSpec::optional(
        "s3.commit",
        "s3:// sink: multipart (files are uploads completed on commit) or copy (hidden objects copied into place on commit, for servers whose upload completion is not atomic); default multipart",
    ),
    OptionSpec::optional(
        "s3.session-token",
        "s3:// paths: session token of temporary credentials (default AWS_SESSION_TOKEN)",
    ),
];

/// The table's `path`, reached with its `s3.*` options.
pub(crate) fn location(options: &Options) -> Result<Location> {
    let get = |key: &str| options.get(key).map(str::to_string);
    let s3 = S3Settings {
        endpoint: get("s3.endpoint"),
        region: get("s3.region"),
        access_key: get("s3.access-key"),
        secret_key: get("s3.secret-key"),
        session_token: get("s3.session-token"),
    };
    Location::parse_with(options.required("path")?, &s3)
}

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
