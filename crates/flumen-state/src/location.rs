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

impl Location {
    /// A path inside this location (a file of a directory table) as the
    /// user would write it: the location as given, then the rest of the
    /// path. Object-store paths drop the leading `/` of a local path, so
    /// messages print this instead.
    pub fn show(&self, path: &Path) -> String {
        let rest = match path.prefix_match(&self.path) {
            Some(parts) => parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>(),
            None if self.local.is_some() => return format!("/{path}"),
            None => return path.to_string(),
        };
        if rest.is_empty() {
            return self.display.clone();
        }
        let base = self.display.trim_end_matches('/');
        format!("{base}/{}", rest.join("/"))
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

    #[test]
    fn paths_inside_are_shown_as_the_user_wrote_the_location() {
        let dir = Location::parse("/tmp/x/").unwrap();
        let file = Path::from("tmp/x/part-0.csv");
        assert_eq!(dir.show(&file), "/tmp/x/part-0.csv");
        assert_eq!(dir.show(&dir.path), "/tmp/x/");
        let relative = Location::parse("data/../in").unwrap();
        let inside = relative.path.clone().join("a.json");
        assert_eq!(relative.show(&inside), "data/../in/a.json");
        let memory = Location::parse("memory:///t").unwrap();
        assert_eq!(memory.show(&Path::from("t/y.csv")), "memory:///t/y.csv");
        assert_eq!(dir.show(&Path::from("elsewhere/z")), "/elsewhere/z");
    }
}
