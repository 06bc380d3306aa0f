//! Turns a path the user gave — a local path or an object-store URL — into
//! an object store and a path inside it (file tables, checkpoint storage).

use std::sync::Arc;

use flumen_types::{FlumenError, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use url::Url;

/// Where a table or a checkpoint directory lives.
#[derive(Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// The path as the user wrote it, for error messages.
    pub display: String,
    /// The absolute local directory, for a local path.
    pub local: Option<std::path::PathBuf>,
    /// The same store, for a store whose multipart uploads can be resumed
    /// by id (S3): a sink can then stage a file as an upload that nobody
    /// sees until it is completed, even by another process.
    pub multipart: Option<Arc<dyn MultipartStore>>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location")
            .field("store", &self.store.to_string())
            .field("path", &self.path)
            .field("display", &self.display)
            .field("local", &self.local)
            .field("multipart", &self.multipart.is_some())
            .finish()
    }
}

/// How to reach an S3-compatible store, from table options; what is not
/// given comes from the usual `AWS_*` environment variables
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …).
#[derive(Clone, Default)]
pub struct S3Settings {
    /// Endpoint URL of a server other than AWS (`http://127.0.0.1:9000`);
    /// an `http://` endpoint is allowed as it is.
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Access key id.
    pub access_key: Option<String>,
    /// Secret access key: never printed.
    pub secret_key: Option<String>,
    /// Session token of temporary credentials: never printed.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &hidden(&self.secret_key))
            .field("session_token", &hidden(&self.session_token))
            .finish()
    }
}

impl Location {
    /// The store and path of `raw`: a local path, or a `file://`,
    /// `memory://` or `s3://` URL (S3 settings from the environment).
    pub fn parse(raw: &str) -> Result<Self> {
        Self::parse_with(raw, &S3Settings::default())
    }

    /// As [`Location::parse`], an `s3://` URL reached with `s3`.
    pub fn parse_with(raw: &str, s3: &S3Settings) -> Result<Self> {
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
            if matches!(url.scheme(), "s3" | "s3a") {
                return Self::s3(raw, &url, s3);
            }
            let (store, path) = object_store::parse_url(&url).map_err(|e| {
                FlumenError::config(format!(
                    "path '{raw}': {e} (this build supports local paths, file://, s3:// and memory:// URLs)"
                ))
            })?;
            return Ok(Location {
                store: Arc::from(store),
                path,
                display: raw.to_string(),
                local: None,
                multipart: None,
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
            multipart: None,
        })
    }

    fn s3(raw: &str, url: &Url, s3: &S3Settings) -> Result<Self> {
        let Some(bucket) = url.host_str().filter(|b| !b.is_empty()) else {
            return Err(FlumenError::config(format!(
                "path '{raw}' names no bucket (s3://BUCKET/PATH)"
            )));
        };
        // A server that does not answer is retried with backoff (about
        // 10 s in all, at most 30 s; object_store's default waits up to 3
        // minutes) before the job fails naming it.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: std::time::Duration::from_millis(250),
                max_backoff: std::time::Duration::from_secs(5),
                base: 2.5,
            },
            max_retries: 8,
            retry_timeout: std::time::Duration::from_secs(30),
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry);
        let given = [
            (AmazonS3ConfigKey::Endpoint, &s3.endpoint),
            (AmazonS3ConfigKey::Region, &s3.region),
            (AmazonS3ConfigKey::AccessKeyId, &s3.access_key),
            (AmazonS3ConfigKey::SecretAccessKey, &s3.secret_key),
            (AmazonS3ConfigKey::Token, &s3.session_token),
        ];
        for (key, value) in given {
            if let Some(value) = value {
                builder = builder.with_config(key, value);
            }
        }
        if builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .is_some_and(|e| e.starts_with("http://"))
        {
            builder = builder.with_allow_http(true);
        }
        // The error names what is wrong with the settings; it never holds
        // a secret (object_store prints no credential).
        let store = Arc::new(
            builder
                .build()
                .map_err(|e| FlumenError::config(format!("path '{raw}': {e}")))?,
        );
        let path = Path::from_url_path(url.path())
            .map_err(|e| FlumenError::config(format!("path '{raw}': {e}")))?;
        Ok(Location {
            store: store.clone(),
            path,
            display: raw.to_string(),
            local: None,
            multipart: Some(store),
        })
    }
}

impl Location {
    /// An error of the store behind this location, said for the user while
    /// `doing` something with it: rejected credentials and a missing bucket
    /// are named as such (a retry cannot cure them); anything else keeps
    /// its cause as an error a retry may cure.
    pub fn error(&self, doing: &str, e: object_store::Error) -> FlumenError {
        let display = &self.display;
        let text = e.to_string();
        // S3 says why in its error code; object_store keeps it in the text
        // of the error (most requests' errors are `Generic`).
        let refused = [
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
            "AccessDenied",
        ]
        .iter()
        .any(|code| text.contains(code));
        match &e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => FlumenError::config(format!(
                "{doing} '{display}': the server rejected the credentials: {e}"
            )),
            _ if refused => FlumenError::config(format!(
                "{doing} '{display}': the server rejected the credentials: {e}"
            )),
            _ if text.contains("NoSuchBucket") => {
                let bucket = Url::parse(display)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                    .unwrap_or_default();
                FlumenError::config(format!(
                    "{doing} '{display}': bucket '{bucket}' does not exist: {e}"
                ))
            }
            _ => FlumenError::transient(format!("{doing} '{display}'"), e),
        }
    }

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

    #[test]
    fn s3_urls_give_a_bucket_path_and_a_multipart_store() {
        let s3 = S3Settings {
            endpoint: Some("http://127.0.0.1:1".into()),
            access_key: Some("id".into()),
            secret_key: Some("very-secret".into()),
            ..S3Settings::default()
        };
        let l = Location::parse_with("s3://bucket/out/q10/", &s3).unwrap();
        assert_eq!(l.path.as_ref(), "out/q10");
        assert!(l.multipart.is_some() && l.local.is_none());
        assert_eq!(
            l.show(&Path::from("out/q10/a.json")),
            "s3://bucket/out/q10/a.json"
        );
        assert!(!format!("{s3:?} {l:?}").contains("very-secret"));
        let err = Location::parse_with("s3:///x", &s3).unwrap_err();
        assert!(err.to_string().contains("names no bucket"), "{err}");
    }
}
