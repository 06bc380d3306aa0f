//! PostgreSQL for the tests that write to it: its URL, `psql`, and tables
//! of unique names dropped when a test ends.

use std::process::Command;
use std::sync::OnceLock;

/// The database's URL: `FLUMEN_POSTGRES_URL`, or the server
/// `scripts/services.sh` starts.
pub fn database() -> &'static str {
    static ADDRESS: OnceLock<String> = OnceLock::new();
    ADDRESS.get_or_init(|| super::service("postgres", "FLUMEN_POSTGRES_URL"))
}

/// Runs `sql` with psql; its rows, `|`-separated, one per line.
pub fn psql(sql: &str) -> String {
    psql_at(database(), sql)
}

/// Runs `sql` with psql in the database at `url`.
pub fn psql_at(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qtA", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Tables of one test, dropped when it ends however it ends.
pub struct Tables(pub Vec<String>);

impl Tables {
    pub fn new(prefix: &str, count: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let id = format!("{prefix}_{}_{nanos}", std::process::id());
        Tables((0..count).map(|i| format!("{id}_{i}")).collect())
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = Command::new("psql")
                .args([database(), "-qc", &format!("DROP TABLE IF EXISTS {t}")])
                .output();
        }
    }
}

/// A database of one test, on the same server, dropped when the test ends
/// however it ends: for what only happens where flumen has not been yet.
pub struct FreshDatabase {
    name: String,
    /// Its URL.
    pub url: String,
}

impl FreshDatabase {
    pub fn new(test: &str) -> Self {
        let name = super::unique_name(test).replace('-', "_");
        psql(&format!("CREATE DATABASE {name}"));
        let base = database();
        let server = &base[..base.rfind('/').expect("a URL names its database")];
        FreshDatabase {
            url: format!("{server}/{name}"),
            name,
        }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                database(),
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}
