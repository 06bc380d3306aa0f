//! The `redis` connector (sink): writes each row as a Redis string, a
//! hash, a list element or a stream entry, keyed by some of its columns.
//! Strings and hashes take an updating stream (upserts by key: an insert
//! or update sets the key, a delete removes it), so a replay after a
//! restart converges to the same state; lists and streams are appended to
//! at least once. See [`sink`].

mod sink;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use flumen_runtime::SinkFactory;
use flumen_types::Result;

use crate::options::OptionSpec;
use crate::{Delivery, TableSpec};

pub use sink::RedisSinkFactory;

/// The `redis` connector (sink).
pub(crate) struct Redis;

#[async_trait::async_trait]
impl crate::Connector for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    fn delivery(&self) -> Option<Delivery> {
        Some(Delivery::AtLeastOnce)
    }
    /// Strings and hashes with key columns take updates (upserts by key).
    fn accepts_updates(&self, spec: &TableSpec) -> bool {
        let keyed = !spec.primary_key.is_empty() || spec.options.get("key.fields").is_some();
        keyed
            && matches!(
                spec.options.get("data-type").unwrap_or("string"),
                "string" | "hash"
            )
    }
    fn sink(
        &self,
        spec: &TableSpec,
        input: SchemaRef,
        _unique: &str,
    ) -> Result<Arc<dyn SinkFactory>> {
        Ok(Arc::new(RedisSinkFactory::try_new(spec, input)?))
    }
}

/// Options of the `redis` connector.
pub(crate) const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required(
        "url",
        "the server: redis://[:password@]host:port[/db]; the password is never printed",
    ),
    OptionSpec::optional("password", "password (overrides the url's); never printed"),
    OptionSpec::optional(
        "data-type",
        "string (default; SET key value), hash (HSET key column value …), list (RPUSH key value) or stream (XADD key * column value …)",
    ),
    OptionSpec::optional(
        "key.fields",
        "columns (a;b) whose values, joined by ':', make each row's key (default: the table's PRIMARY KEY)",
    ),
    OptionSpec::optional(
        "key.prefix",
        "text put before every key; for a list or stream without key columns, the key itself (default none)",
    ),
    OptionSpec::optional(
        "format",
        "string, list: how the non-key columns become the value: json (default; an object) or raw (the one non-key column as text)",
    ),
    OptionSpec::optional(
        "ttl",
        "string, hash: keys expire this long after their last write, e.g. '1 h' (default never)",
    ),
    OptionSpec::optional(
        "connect.max-retries",
        "attempts to reach the server before the job fails, with backoff from 100 ms (default 6)",
    ),
];
