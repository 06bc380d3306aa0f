//! Exactly-once recovery of the `flumen` binary: a job with checkpoints is
//! killed with SIGKILL at random moments and started again until it
//! finishes; what its file sinks committed must equal the output of a run
//! without failures, as multisets (a changelog folded to its final rows).
//! Also: savepoints taken on SIGTERM resume at another parallelism, torn
//! checkpoints are skipped or refused, and a changed plan is refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Events of the generator: 24 s of event time, read over 12 s of wall
/// clock when throttled, so that ten runs killed within a second each
/// cannot finish the job.
const EVENTS: u64 = 240_000;
const THROTTLED_SECONDS: u64 = 12;

/// A windowed aggregate, a regular join and an updating aggregate, each to
/// a file sink, over the Nexmark generator, throttled or not.
fn job_sql(out: &Path, throttle: bool) -> String {
    // rows_per_second per table: its share of the events over the run.
    let rps = |share: u64| {
        if throttle {
            format!(
                ", rows_per_second = '{}'",
                EVENTS * share / 50 / THROTTLED_SECONDS
            )
        } else {
            String::new()
        }
    };
    let out = out.display();
    format!(
        "
CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP(3),
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', kind = 'bid', events = '{EVENTS}', rate = '10000', seed = '7'{bid});
CREATE TABLE auction (id BIGINT, seller BIGINT, category BIGINT, date_time TIMESTAMP(3),
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', kind = 'auction', events = '{EVENTS}', rate = '10000', seed = '7'{auction});

CREATE TABLE windowed (auction BIGINT, num BIGINT, top BIGINT, window_start TIMESTAMP(3))
  WITH (connector = 'filesystem', path = '{out}/windowed', format = 'csv');
INSERT INTO windowed
SELECT auction, count(*), max(price), window_start
FROM tumble(bid, descriptor(date_time), INTERVAL '2' SECOND)
GROUP BY auction, window_start, window_end;

CREATE TABLE joined (auction BIGINT, price BIGINT, seller BIGINT)
  WITH (connector = 'filesystem', path = '{out}/joined', format = 'csv');
INSERT INTO joined
SELECT B.auction, B.price, A.seller FROM bid AS B JOIN auction AS A ON B.auction = A.id
WHERE A.category = 10;

CREATE TABLE updating (channel VARCHAR, n BIGINT, top BIGINT)
  WITH (connector = 'filesystem', path = '{out}/updating', format = 'csv', changelog = 'true');
INSERT INTO updating SELECT channel, count(*), max(price) FROM bid GROUP BY channel;
",
        bid = rps(46),
        auction = rps(3),
    )
}

const SINKS: [&str; 3] = ["windowed", "joined", "updating"];

fn flumen(args: &[&str], dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flumen"));
    cmd.args(args).current_dir(dir);
    cmd
}

fn run_to_end(args: &[&str], dir: &Path) -> Output {
    let out = flumen(args, dir).output().expect("flumen runs");
    assert!(
        out.status.success(),
        "flumen {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The rows committed under `dir`: visible files only, headers skipped; a
/// changelog (a trailing `_op` column) folded to the rows it ends with.
fn committed_rows(dir: &Path) -> Vec<String> {
    let mut rows: Vec<String> = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return rows;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.starts_with('.') && !name.starts_with('_')
        })
        .collect();
    // A key's changes are in order within a subtask's files, and a key moves
    // between subtasks only at a restart, which starts a new checkpoint: so
    // fold by checkpoint (the next-to-last number of a committed file's
    // name), then subtask and file.
    let order = |p: &PathBuf| {
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        let numbers: Vec<u64> = name.split('-').filter_map(|n| n.parse().ok()).collect();
        let checkpoint = numbers.len().checked_sub(2).map_or(0, |i| numbers[i]);
        (checkpoint, name)
    };
    files.sort_by_key(order);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let changelog = header.ends_with(",_op");
        for line in lines {
            if !changelog {
                rows.push(line.to_string());
                continue;
            }
            let (row, op) = line.rsplit_once(',').unwrap();
            match op {
                "0" | "3" => rows.push(row.to_string()),
                "1" | "2" => {
                    let at = rows
                        .iter()
                        .position(|r| r == row)
                        .unwrap_or_else(|| panic!("{file:?}: op {op} of a row never added: {row}"));
                    rows.swap_remove(at);
                }
                other => panic!("{file:?}: unknown op {other}"),
            }
        }
    }
    rows.sort();
    rows
}

/// The output of an uninterrupted run without checkpoints.
fn expected(work: &Path) -> Vec<Vec<String>> {
    let out = work.join("expected");
    std::fs::write(work.join("expected.sql"), job_sql(&out, false)).unwrap();
    run_to_end(&["run", "expected.sql", "-p", "2"], work);
    let rows: Vec<Vec<String>> = SINKS.iter().map(|s| committed_rows(&out.join(s))).collect();
    assert!(
        rows.iter().all(|r| r.len() > 4),
        "the job gives rows: {:?}",
        rows.iter().map(Vec::len).collect::<Vec<_>>()
    );
    rows
}

/// A small deterministic random sequence (xorshift), seeded per test.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn wait_or_kill(child: &mut Child, after: Duration) -> bool {
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "flumen failed: see its stderr above");
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    false
}

/// Runs the job with checkpoints every 200 ms, killing it with SIGKILL at
/// random moments at least `kills` times and starting it again, at the
/// parallelisms `parallelism` cycles through, until a run finishes.
fn crash_until_done(work: &Path, name: &str, parallelism: &[&str], kills: usize, seed: u64) {
    let out = work.join(name);
    let sql = format!("{name}.sql");
    std::fs::write(work.join(&sql), job_sql(&out, true)).unwrap();
    let checkpoints = work.join(format!("{name}-checkpoints"));
    let checkpoints = checkpoints.to_str().unwrap();
    let mut random = Random(seed);
    let deadline = Instant::now() + Duration::from_secs(240);
    // Every run but the last is killed: the attempt number counts the kills.
    for killed in 0.. {
        assert!(Instant::now() < deadline, "{name}: not done within 240 s");
        let p = parallelism[killed % parallelism.len()];
        let mut child = flumen(
            &[
                "run",
                &sql,
                "-p",
                p,
                "--checkpoint-dir",
                checkpoints,
                "--checkpoint-interval",
                "200ms",
            ],
            work,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("flumen starts");
        if killed >= kills {
            let status = child.wait().unwrap();
            assert!(status.success(), "{name}: the last run failed");
            return;
        }
        let after = Duration::from_millis(250 + random.below(750));
        assert!(
            !wait_or_kill(&mut child, after),
            "{name}: finished after {killed} kills, before its kill"
        );
    }
}

fn check(work: &Path, name: &str, expected: &[Vec<String>]) {
    for (sink, want) in SINKS.iter().zip(expected) {
        let got = committed_rows(&work.join(name).join(sink));
        assert!(
            got == *want,
            "{name}/{sink}: {} rows committed, {} expected; first differences: {:?}",
            got.len(),
            want.len(),
            got.iter().zip(want).find(|(g, w)| g != w)
        );
    }
}

#[test]
fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let expected = expected(work);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill timings seeded with {seed}");
    crash_until_done(work, "p1", &["1"], 10, seed);
    check(work, "p1", &expected);
    crash_until_done(work, "p2", &["2"], 10, seed ^ 0x9e37);
    check(work, "p2", &expected);
    crash_until_done(work, "rescaled", &["2", "1", "3"], 10, seed ^ 0x51f1);
    check(work, "rescaled", &expected);
}
