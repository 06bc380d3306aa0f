//! Turns a `path` option — a local path or an object-store URL — into an
//! object store and a path inside it.

use std::sync::Arc;

use flumen_types::{FlumenError, Result};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use url::Url;

/// Where a filesystem table lives.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// The path as the user wrote it, for error messages.
    pub display: String,
    /// The absolute local directory, for a local path.
    pub local: Option<std::path::PathBuf>,
}

impl Location {
    pub(crate) fn parse(raw: &str) -> Result<Self> {
        if raw.contains("://") {
            let url = Url::parse(raw).map_err(|e| {
                FlumenError::config(format!("path '{raw}' is not a valid URL: {e}"))
            })?;
            if url.scheme() == "file" {
                let local = url.to_file_path().map_err(|_| {
                    FlumenError::config(format!("path '{raw}' is not a local file URL"))
                })?;
                return Self::local(raw, local);
            }
            let (store, path) = object_store::parse_url(&url).map_err(|e| {
                FlumenError::config(format!(
                    "path '{raw}': {e} (this build supports local paths, file:// and memory:// URLs)"
                ))
            })?;
            return Ok(Location {
                store: Arc::from(store),
                path,
                display: raw.to_string(),
                local: None,
            });
        }
        let local = std::path::absolute(raw)
            .map_err(|e| FlumenError::config(format!("path '{raw}': {e}")))?;
        Self::local(raw, local)
    }

    fn local(raw: &str, local: std::path::PathBuf) -> Result<Self> {
        let path = Path::from_absolute_path(&local)
            .map_err(|e| FlumenError::config(format!("path '{raw}': {e}")))?;
        Ok(Location {
            store: Arc::new(LocalFileSystem::new()),
            path,
            display: raw.to_string(),
            local: Some(local),
        })
    }
}
