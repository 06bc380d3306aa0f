//! What every lookup table (the table side of `JOIN t FOR SYSTEM_TIME AS OF
//! …`) takes beside its connector's own options: its cache and its retries,
//! named as Flink's lookup options.

use std::sync::Arc;
use std::time::Duration;

use flumen_runtime::{LookupCache, LookupFactory};
use flumen_types::{FlumenError, Result};

use crate::options::OptionSpec;
use crate::{TableSpec, connector_of};

/// The lookup options of every connector whose tables can be looked up.
pub(crate) const OPTIONS: &[OptionSpec] = &[
    OptionSpec::optional(
        "lookup.cache",
        "'PARTIAL' (default): keep the keys read in a bounded cache per subtask; 'NONE': read every key of every batch",
    ),
    OptionSpec::optional(
        "lookup.partial-cache.max-rows",
        "keys the cache holds per subtask; when full, the key read longest ago goes first (default 10000)",
    ),
    OptionSpec::optional(
        "lookup.partial-cache.expire-after-write",
        "how long a key read is used before it is read again (default '60 s')",
    ),
    OptionSpec::optional(
        "lookup.partial-cache.cache-missing-key",
        "whether a key the table does not have is cached as missing (default true)",
    ),
    OptionSpec::optional(
        "lookup.max-retries",
        "times a read is tried again after the connection broke, with backoff, before the job fails (default 3)",
    ),
];

/// The cache `spec`'s options ask for; `None` with `lookup.cache = 'NONE'`.
pub fn lookup_cache(spec: &TableSpec) -> Result<Option<LookupCache>> {
    let o = &spec.options;
    let kind = o.get("lookup.cache").unwrap_or("PARTIAL").to_uppercase();
    match kind.as_str() {
        "NONE" => return Ok(None),
        "PARTIAL" => {}
        other => {
            return Err(FlumenError::config(format!(
                "table '{}': option lookup.cache = '{other}' is not one of: PARTIAL, NONE",
                spec.name
            )));
        }
    }
    let max_keys = o
        .parse::<usize>("lookup.partial-cache.max-rows")?
        .unwrap_or(10_000);
    if max_keys == 0 {
        return Err(FlumenError::config(format!(
            "table '{}': lookup.partial-cache.max-rows must be at least 1 (or set lookup.cache = 'NONE')",
            spec.name
        )));
    }
    Ok(Some(LookupCache {
        max_keys,
        ttl: o
            .duration("lookup.partial-cache.expire-after-write")?
            .unwrap_or(Duration::from_secs(60)),
        cache_missing: o
            .parse::<bool>("lookup.partial-cache.cache-missing-key")?
            .unwrap_or(true),
    }))
}

/// How many times a lookup read is tried again after its connection broke.
pub(crate) fn max_retries(spec: &TableSpec) -> Result<u32> {
    Ok(spec
        .options
        .parse::<u32>("lookup.max-retries")?
        .unwrap_or(3))
}

/// A lookup of `spec`'s rows by its columns `keys`, returning its
/// `projection` columns; the table and columns are checked in the system.
pub async fn lookup_factory(
    spec: &TableSpec,
    projection: &[usize],
    keys: &[usize],
) -> Result<Arc<dyn LookupFactory>> {
    let in_table = |e: FlumenError| match e {
        FlumenError::Config(m) => FlumenError::config(format!("table '{}': {m}", spec.name)),
        other => other,
    };
    connector_of(spec)?
        .lookup(spec, projection, keys)
        .await
        .map_err(in_table)
}
