//! Turns a path the user gave — a local path or an object-store URL — into
//! an object store and a path inside it (file tables, checkpoint storage).

use std::sync::Arc;

use flumen_types::{FlumenError, Result};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use url::Url;

/// Where a table or a checkpoint directory lives.
#[derive(Debug, Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// The path as the user wrote it, for error messages.
    pub display: String,
    /// The absolute local directory, for a local path.
    pub local: Option<std::path::PathBuf>,
}

impl Location {
    /// The store and path of `raw`: a local path, or a `file://` or
    /// `memory://` URL.
    pub fn parse(raw: &str) -> Result<Self> {
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
        let local = without_dot_segments(&local);
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

/// `path` with `.` and `..` segments resolved by their text alone (object
/// store paths take neither), so `../data/x.csv` works as in a shell.
fn without_dot_segments(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_of_a_local_path_are_resolved() {
        let l = Location::parse("/tmp/a/../b/./c.csv").unwrap();
        assert_eq!(l.path.as_ref(), "tmp/b/c.csv");
        assert_eq!(l.local.unwrap(), std::path::PathBuf::from("/tmp/b/c.csv"));
    }
}
