//! The `filesystem` connector on `s3://` paths against a real S3-compatible
//! server on loopback (`scripts/services.sh s3` builds and starts s3s-fs
//! when `FLUMEN_S3_ENDPOINT` is not set): a windowed query reading and
//! writing S3 gives exactly what it gives over local files, at several
//! parallelisms and with its checkpoints in S3 too; Hive-partitioned
//! output reads back as written; killed with SIGKILL at random moments, a
//! job's committed files on S3 hold each row exactly once (files are
//! multipart uploads completed when their checkpoint completes); wrong
//! credentials, missing buckets and unreachable servers are named, and no
//! secret is printed. Every test works under a prefix of its own in the
//! server's bucket and deletes it.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};

use common::bids::{BID_COLUMNS, OUT_COLUMNS, WINDOWED, assert_same, bids, expected, lines_of};
use common::{flumen, runtime};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// The bucket `scripts/services.sh` makes.
const BUCKET: &str = "flumen";
const ACCESS_KEY: &str = "flumen";
const SECRET_KEY: &str = "flumen-test-secret";

/// The server: `FLUMEN_S3_ENDPOINT`, or the one `scripts/services.sh` starts.
fn endpoint() -> &'static str {
    static ADDRESS: OnceLock<String> = OnceLock::new();
    ADDRESS.get_or_init(|| common::service("s3", "FLUMEN_S3_ENDPOINT"))
}

fn store() -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(BUCKET)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .unwrap(),
    )
}

/// The table options that reach the server.
fn s3_options() -> String {
    format!(
        "'s3.endpoint' = '{}', 's3.access-key' = '{ACCESS_KEY}', 's3.secret-key' = '{SECRET_KEY}'",
        endpoint()
    )
}

/// A prefix of the bucket that belongs to one test; deleted when dropped.
struct Prefix(String);

impl Prefix {
    fn new(test: &str) -> Self {
        Prefix(common::unique_name(test))
    }

    /// `s3://flumen/<prefix>/<dir>`.
    fn url(&self, dir: &str) -> String {
        format!("s3://{BUCKET}/{}/{dir}", self.0)
    }

    /// Uploads every file of local directory `dir` under `<prefix>/<name>/`.
    fn upload(&self, dir: &Path, name: &str) {
        let store = store();
        runtime().block_on(async {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let file = path.file_name().unwrap().to_str().unwrap();
                if file.starts_with(['.', '_']) {
                    continue;
                }
                let key = StorePath::from(format!("{}/{name}/{file}", self.0));
                let bytes = std::fs::read(&path).unwrap();
                store.put(&key, PutPayload::from(bytes)).await.unwrap();
            }
        });
    }

    /// The keys under `<prefix>/<dir>/`, relative to it, sorted.
    fn keys(&self, dir: &str) -> Vec<String> {
        let store = store();
        let base = format!("{}/{dir}/", self.0);
        let mut keys: Vec<String> = runtime().block_on(async {
            store
                .list(Some(&StorePath::from(format!("{}/{dir}", self.0))))
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .unwrap()
        });
        keys.iter_mut()
            .for_each(|k| *k = k.strip_prefix(&base).unwrap().to_string());
        keys.sort();
        keys
    }

    /// The lines of every visible file under `<prefix>/<dir>/`, sorted.
    fn lines(&self, dir: &str) -> Vec<String> {
        let store = store();
        let mut lines = Vec::new();
        let keys = self.keys(dir);
        runtime().block_on(async {
            for key in keys {
                if key.rsplit('/').next().unwrap().starts_with(['.', '_']) {
                    continue;
                }
                let path = StorePath::from(format!("{}/{dir}/{key}", self.0));
                let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
                let text = String::from_utf8(bytes.to_vec()).unwrap();
                lines.extend(text.lines().map(str::to_string));
            }
        });
        lines.sort();
        lines
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let store = store();
        let prefix = StorePath::from(self.0.as_str());
        runtime().block_on(async {
            let keys = store.list(Some(&prefix)).map_ok(|m| m.location).boxed();
            let _ = store
                .delete_stream(keys)
                .try_collect::<Vec<StorePath>>()
                .await;
        });
    }
}

/// The environment that points `--checkpoint-dir s3://…` at the server.
fn aws_env(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
}

#[test]
fn reads_and_writes_s3_exactly_at_several_parallelisms() {
    let work = tempfile::tempdir().unwrap();
    let prefix = Prefix::new("rw");
    bids(work.path(), 60_000);
    prefix.upload(&work.path().join("bids"), "bids");
    let want = expected(work.path());
    for p in ["1", "2", "4"] {
        let out = format!("out-{p}");
        let sql = format!(
            "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = '{}', format = 'json', {s3});
             CREATE TABLE out ({OUT_COLUMNS}) WITH (connector = 'filesystem', path = '{}', format = 'json', {s3});
             INSERT INTO out {WINDOWED};",
            prefix.url("bids"),
            prefix.url(&out),
            s3 = s3_options()
        );
        std::fs::write(work.path().join("job.sql"), sql).unwrap();
        let mut cmd = flumen(&["run", "job.sql", "-p", p], work.path());
        // At p=2 with checkpoints, kept in the bucket as well.
        if p == "2" {
            let checkpoints = prefix.url("checkpoints");
            aws_env(cmd.args([
                "--checkpoint-dir",
                &checkpoints,
                "--checkpoint-interval",
                "100ms",
            ]));
        }
        let run = cmd.output().unwrap();
        assert!(
            run.status.success(),
            "p={p}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_same(&format!("p={p}"), &prefix.lines(&out), &want);
    }
    let manifests: Vec<String> = prefix
        .keys("checkpoints")
        .into_iter()
        .filter(|k| k.ends_with("manifest.json"))
        .collect();
    assert!(!manifests.is_empty(), "checkpoints are written to S3");
}

/// Every bid with its date, hour and a bucket of its auction: the columns
/// the partitioned tests write.
const PARTITIONED_COLUMNS: &str =
    "auction BIGINT, bidder BIGINT, price BIGINT, dt VARCHAR, hour VARCHAR, bucket BIGINT";
const PARTITIONED_QUERY: &str = "SELECT auction, bidder, price,
    to_char(date_time, '%Y-%m-%d') AS dt, to_char(date_time, '%H') AS hour, auction % 4 AS bucket FROM bid";

#[test]
fn partitioned_output_reads_back_as_written() {
    let work = tempfile::tempdir().unwrap();
    let prefix = Prefix::new("part");
    bids(work.path(), 40_000);
    let sql = format!(
        "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = 'bids', format = 'json');
         CREATE TABLE want ({PARTITIONED_COLUMNS}) WITH (connector = 'filesystem', path = 'want', format = 'json');
         INSERT INTO want {PARTITIONED_QUERY};
         CREATE TABLE parts ({PARTITIONED_COLUMNS}) WITH (connector = 'filesystem', path = '{}',
           format = 'parquet', partition_by = 'dt, bucket', {s3});
         INSERT INTO parts {PARTITIONED_QUERY};",
        prefix.url("parts"),
        s3 = s3_options()
    );
    std::fs::write(work.path().join("write.sql"), sql).unwrap();
    common::run_ok(work.path(), "write.sql", "2");
    let want = lines_of(&work.path().join("want"), true);
    let dirs: std::collections::BTreeSet<String> = prefix
        .keys("parts")
        .iter()
        .map(|k| k.rsplit_once('/').unwrap().0.to_string())
        .collect();
    let day = &want[0].split("\"dt\":\"").nth(1).unwrap()[..10];
    let expected_dirs: std::collections::BTreeSet<String> =
        (0..4).map(|b| format!("dt={day}/bucket={b}")).collect();
    assert_eq!(dirs, expected_dirs, "Hive-style directories");
    // Read back with the partition columns in another order and a subset.
    let sql = format!(
        "CREATE TABLE parts (bucket BIGINT, auction BIGINT, dt VARCHAR, bidder BIGINT, price BIGINT, hour VARCHAR)
           WITH (connector = 'filesystem', path = '{}', format = 'parquet', partition_by = 'dt, bucket', {s3});
         CREATE TABLE back ({PARTITIONED_COLUMNS}) WITH (connector = 'filesystem', path = 'back', format = 'json');
         INSERT INTO back SELECT auction, bidder, price, dt, hour, bucket FROM parts;",
        prefix.url("parts"),
        s3 = s3_options()
    );
    std::fs::write(work.path().join("read.sql"), sql).unwrap();
    common::run_ok(work.path(), "read.sql", "3");
    assert_same(
        "read back",
        &lines_of(&work.path().join("back"), true),
        &want,
    );
}

#[test]
fn sigkill_at_random_moments_commits_each_row_once() {
    let work = tempfile::tempdir().unwrap();
    let prefix = Prefix::new("kill");
    bids(work.path(), 120_000);
    let want = expected(work.path());
    let want_rows = partitioned_rows(work.path());
    // Committed by copying hidden objects into place: s3s-fs forgets an
    // upload before it writes the completed object, and drops that work
    // when the client dies mid-request, so a SIGKILL during a commit of
    // multipart uploads loses the file on this server (S3 completes
    // atomically). The multipart commit is restarted in
    // `a_stop_with_savepoint_resumes_its_uploads_exactly` instead.
    let sql = job_sql(&prefix, 8000, "'s3.commit' = 'copy'");
    std::fs::write(work.path().join("job.sql"), sql).unwrap();
    common::crash_until_done_within(
        work.path(),
        "job.sql",
        &work.path().join("checkpoints"),
        &["2", "1", "3"],
        5,
        0x0053_3333,
        1000..3000,
    );
    check_job_output(&prefix, &want, &want_rows);
}

/// The windowed query and every bid (partitioned by `bucket`) from local
/// bids read at `rate` rows/s into S3 under `prefix`, with `commit`
/// options on both sinks.
fn job_sql(prefix: &Prefix, rate: u64, commit: &str) -> String {
    // Every bid as well, partitioned: every checkpoint interval has files
    // to commit, so a restart after any of them would commit some twice
    // but for committing by checkpoint.
    format!(
        "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = 'bids', format = 'json',
           rows_per_second = '{rate}');
         CREATE TABLE out ({OUT_COLUMNS}) WITH (connector = 'filesystem', path = '{}', format = 'json',
           {s3}, {commit});
         INSERT INTO out {WINDOWED};
         CREATE TABLE rows_out ({PARTITIONED_COLUMNS}) WITH (connector = 'filesystem', path = '{}',
           format = 'json', partition_by = 'bucket', {s3}, {commit});
         INSERT INTO rows_out {PARTITIONED_QUERY};",
        prefix.url("out"),
        prefix.url("rows"),
        s3 = s3_options()
    )
}

/// What `job_sql` committed equals `want` (windows) and `want_rows` (bids).
fn check_job_output(prefix: &Prefix, want: &[String], want_rows: &[String]) {
    assert_same("windows", &prefix.lines("out"), want);
    // The bucket column is in the directory names, not in the files.
    let mut rows: Vec<String> = Vec::new();
    for bucket in 0..4 {
        rows.extend(
            prefix
                .lines(&format!("rows/bucket={bucket}"))
                .into_iter()
                .map(|l| format!("{},\"bucket\":{bucket}}}", l.trim_end_matches('}'))),
        );
    }
    rows.sort();
    assert_same("every bid", &rows, want_rows);
}

/// The rows `PARTITIONED_QUERY` gives over the bids in `work/bids`, sorted.
fn partitioned_rows(work: &Path) -> Vec<String> {
    std::fs::write(
        work.join("want.sql"),
        format!(
            "CREATE TABLE bid ({BID_COLUMNS}) WITH (connector = 'filesystem', path = 'bids', format = 'json');
             CREATE TABLE want ({PARTITIONED_COLUMNS}) WITH (connector = 'filesystem', path = 'want', format = 'json');
             INSERT INTO want {PARTITIONED_QUERY};"
        ),
    )
    .unwrap();
    common::run_ok(work, "want.sql", "1");
    lines_of(&work.join("want"), true)
}

#[test]
fn a_stop_with_savepoint_resumes_its_uploads_exactly() {
    let work = tempfile::tempdir().unwrap();
    let prefix = Prefix::new("stop");
    bids(work.path(), 60_000);
    let want = expected(work.path());
    let want_rows = partitioned_rows(work.path());
    std::fs::write(
        work.path().join("job.sql"),
        job_sql(&prefix, 15_000, "'s3.commit' = 'multipart'"),
    )
    .unwrap();
    let checkpoints = work.path().join("checkpoints");
    let checkpoints = checkpoints.to_str().unwrap();
    let args = |p: &'static str| {
        vec![
            "run",
            "job.sql",
            "-p",
            p,
            "--checkpoint-dir",
            checkpoints,
            "--checkpoint-interval",
            "300ms",
        ]
    };
    let child = flumen(&args("2"), work.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2000));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let savepoint = text
        .lines()
        .find_map(|l| l.strip_prefix("savepoint: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no savepoint reported:\n{text}"))
        .to_string();
    let rows_so_far = prefix.keys("rows").len();
    assert!(rows_so_far > 0, "files were committed before the stop");
    let mut resume = args("3");
    resume.extend(["--from-savepoint", &savepoint]);
    let out = flumen(&resume, work.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_job_output(&prefix, &want, &want_rows);
}

/// Runs `sql` in `work`, which must fail within 60 s; returns its stderr.
fn fails(work: &Path, sql: &str) -> String {
    std::fs::write(work.join("bad.sql"), sql).unwrap();
    let mut child = flumen(&["run", "bad.sql"], work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("bad.sql still running after 60 s:\n{sql}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let text = reader.join().unwrap();
    assert!(!status.success(), "bad.sql succeeded:\n{sql}");
    assert!(!text.contains("panicked"), "{text}");
    text
}

#[test]
fn wrong_credentials_missing_buckets_and_unreachable_servers_are_named() {
    let work = tempfile::tempdir().unwrap();
    let prefix = Prefix::new("bad");
    std::fs::write(work.path().join("a.json"), "{\"a\": 1}\n").unwrap();
    prefix.upload(work.path(), "in");
    let table = |path: &str, options: &str| {
        format!(
            "CREATE TABLE t (a BIGINT) WITH (connector = 'filesystem', path = '{path}', format = 'json', {options});
             CREATE TABLE o (a BIGINT) WITH (connector = 'stdout');
             INSERT INTO o SELECT a FROM t;"
        )
    };
    let sink = |path: &str, options: &str| {
        format!(
            "CREATE TABLE t (a BIGINT) WITH (connector = 'filesystem', path = 'a.json', format = 'json');
             CREATE TABLE o (a BIGINT) WITH (connector = 'filesystem', path = '{path}', format = 'json', {options});
             INSERT INTO o SELECT a FROM t;"
        )
    };
    let wrong_secret = "wrong-secret-4711";
    let wrong = format!(
        "'s3.endpoint' = '{}', 's3.access-key' = '{ACCESS_KEY}', 's3.secret-key' = '{wrong_secret}'",
        endpoint()
    );
    for (what, sql) in [
        ("source", table(&prefix.url("in"), &wrong)),
        ("sink", sink(&prefix.url("out"), &wrong)),
    ] {
        let err = fails(work.path(), &sql);
        assert!(
            err.contains(&prefix.url(if what == "source" { "in" } else { "out" })),
            "{what}: {err}"
        );
        assert!(err.contains("credentials"), "{what}: {err}");
        assert!(
            !err.contains(wrong_secret),
            "{what} printed the secret: {err}"
        );
    }
    let missing = "s3://no-such-bucket-flumen/x";
    for sql in [table(missing, &s3_options()), sink(missing, &s3_options())] {
        let err = fails(work.path(), &sql);
        assert!(
            err.contains("bucket 'no-such-bucket-flumen' does not exist"),
            "{err}"
        );
        assert!(!err.contains(SECRET_KEY), "printed the secret: {err}");
    }
    let err = fails(
        work.path(),
        &table(
            &prefix.url("in"),
            &format!(
                "'s3.endpoint' = 'http://127.0.0.1:1', 's3.access-key' = '{ACCESS_KEY}', 's3.secret-key' = '{SECRET_KEY}'"
            ),
        ),
    );
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains(SECRET_KEY), "printed the secret: {err}");
}

/// Where `scripts/services.sh` builds s3s-fs.
fn s3s_fs() -> std::path::PathBuf {
    common::tool("s3s-fs")
}

/// The test's own s3s-fs stopped (SIGINT) 1.5 s into a run and started again 1.5 s
/// later: the store client's retries (with backoff, ~10 s in all) ride the
/// outage out (the job takes about twice as long); without retries the job
/// fails and restarts from its last checkpoint (tried: still exact).
/// Either way what is committed holds every row once.
#[test]
fn a_server_restart_mid_run_loses_and_doubles_nothing() {
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // The shared server's start builds s3s-fs when missing; the test's
    // own serves a directory that outlives its restarts.
    endpoint();
    std::fs::create_dir_all(data.path().join(BUCKET)).unwrap();
    let dir = data.path().to_path_buf();
    let mut own = common::OwnServer::start("s3s-fs", move |port| {
        let mut c = std::process::Command::new(s3s_fs());
        c.args(["--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&dir)
            .stderr(Stdio::null());
        c
    });
    let own_endpoint = format!("http://127.0.0.1:{}", own.port);
    bids(work.path(), 60_000);
    let want = expected(work.path());
    let want_rows = partitioned_rows(work.path());
    let prefix = Prefix::new("restart");
    let sql =
        job_sql(&prefix, 12_000, "'s3.commit' = 'multipart'").replace(endpoint(), &own_endpoint);
    std::fs::write(work.path().join("job.sql"), sql).unwrap();
    let child = common::start_checkpointed(work.path(), "job.sql", "2");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Stopped as an operator restarts it: s3s-fs drains its requests on
    // SIGINT. Killed (SIGKILL) mid-completion it loses the upload, since it
    // deletes the upload's record before writing the object (real S3
    // completes atomically): a later completion is refused as AccessDenied
    // and the file is gone.
    own.interrupt();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    own.up();
    common::finish_checkpointed(child, work.path(), std::time::Duration::from_secs(120));
    // Read what the restarted server holds straight from its directory.
    let lines = |dir: &str| {
        let root = data.path().join(BUCKET).join(&prefix.0).join(dir);
        let mut out = Vec::new();
        for entry in walk(&root) {
            let name = entry.file_name().unwrap().to_str().unwrap().to_string();
            if name.starts_with(['.', '_']) {
                continue;
            }
            let text = std::fs::read_to_string(&entry).unwrap();
            let bucket = entry
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("bucket="))
                .map(str::to_string);
            out.extend(text.lines().map(|l| match &bucket {
                Some(b) => format!("{},\"bucket\":{b}}}", l.trim_end_matches('}')),
                None => l.to_string(),
            }));
        }
        out.sort();
        out
    };
    assert_same("windows", &lines("out"), &want);
    assert_same("every bid", &lines("rows"), &want_rows);
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
