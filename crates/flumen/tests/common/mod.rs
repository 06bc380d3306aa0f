//! Helpers shared by the integration tests that run the `flumen` binary.

#![allow(dead_code)]

pub mod bids;
pub mod lookup;
pub mod postgres;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `flumen` binary with `args`, run in `dir`.
pub fn flumen(args: &[&str], dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flumen"));
    cmd.args(args).current_dir(dir);
    cmd
}

/// Runs `flumen run SQL -p P` in `dir`, which must succeed.
pub fn run_ok(dir: &Path, sql: &str, parallelism: &str) {
    let out = flumen(&["run", sql, "-p", parallelism], dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flumen run {sql} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The address of the server `name` (`postgres`, `kafka`) the tests talk
/// to: the environment variable `var`, or what `scripts/services.sh name`
/// prints after starting it.
pub fn service(name: &str, var: &str) -> String {
    if let Ok(address) = std::env::var(var) {
        return address;
    }
    // Read when the test runs: a test binary reused from another checkout
    // (the target directory is shared) would otherwise run that one's script.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = Path::new(&crate_dir).join("../../scripts/services.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(name)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/services.sh runs");
    assert!(out.status.success(), "scripts/services.sh {name} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("scripts/services.sh printed no line for {name}: {text}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

/// A name no other test run uses at the same time: `test`, this
/// process's id and the clock's nanoseconds.
pub fn unique_name(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{test}-{}-{nanos}", std::process::id())
}

/// Starts `flumen run SQL -p P` in `work` with checkpoints every 200 ms
/// under `work/checkpoints`, its stderr going to `work/flumen.log`.
pub fn start_checkpointed(work: &Path, sql: &str, parallelism: &str) -> Child {
    let log = std::fs::File::create(work.join("flumen.log")).unwrap();
    flumen(
        &[
            "run",
            sql,
            "-p",
            parallelism,
            "--checkpoint-dir",
            "checkpoints",
            "--checkpoint-interval",
            "200ms",
        ],
        work,
    )
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .expect("flumen starts")
}

/// Waits up to `within` for a job [`start_checkpointed`] started; it must
/// succeed (else the assertion shows its log). Returns its log.
pub fn finish_checkpointed(mut child: Child, work: &Path, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(work.join("flumen.log")).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "failed or not done within {within:?}: {log}"
    );
    log
}

/// Sends SIGTERM to `pid` through the `kill` command (a stop with a
/// savepoint for flumen, a clean shutdown for a server).
pub fn sigterm(pid: u32) {
    let status = Command::new("kill").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

/// A server of one test's own on a free loopback port (so stopping it
/// disturbs no other test), stopped and started again mid-run; killed
/// when dropped.
pub struct OwnServer {
    /// The port it listens on.
    pub port: u16,
    name: &'static str,
    command: Box<dyn Fn(u16) -> Command>,
    child: Option<Child>,
}

impl OwnServer {
    /// Starts `command(port)` (its stdout discarded) and waits for it to
    /// listen; `up` starts the same command again.
    pub fn start(name: &'static str, command: impl Fn(u16) -> Command + 'static) -> Self {
        OwnServer::start_on(free_port(), name, command)
    }

    /// [`OwnServer::start`] on `port`.
    pub fn start_on(
        port: u16,
        name: &'static str,
        command: impl Fn(u16) -> Command + 'static,
    ) -> Self {
        let mut s = OwnServer {
            port,
            name,
            command: Box::new(command),
            child: None,
        };
        s.up();
        s
    }

    /// Starts it (again) and waits for it to listen.
    pub fn up(&mut self) {
        let child = (self.command)(self.port)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", self.name));
        self.child = Some(child);
        wait_listening(self.port, self.name);
    }

    /// Stops it as a shutdown does (SIGTERM) and waits for it.
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigterm(child.id());
            child.wait().unwrap();
        }
    }

    /// Stops it as Ctrl-C does (SIGINT: servers that drain their requests
    /// on it finish those in flight) and waits for it.
    pub fn interrupt(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            child.wait().unwrap();
        }
    }

    /// Kills it (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A single-threaded tokio runtime for a test's own client calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A TCP port on loopback that nothing listens on now, for a test's own server.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 10 s for `what` to listen on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small deterministic random sequence (xorshift), seeded per test.
pub struct Random(pub u64);

impl Random {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Waits up to `after` for `child` to finish (it must succeed); kills it
/// with SIGKILL when it has not. Returns whether it finished.
pub fn wait_or_kill(child: &mut Child, after: Duration) -> bool {
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

/// Runs the job in `sql` (a file in `work`) with checkpoints every 200 ms
/// under `checkpoints`, killing it with SIGKILL at random moments (250 ms
/// to 1 s after it starts) at least `kills` times and starting it again,
/// at the parallelisms `parallelism` cycles through, until a run finishes
/// (within 240 s).
pub fn crash_until_done(
    work: &Path,
    sql: &str,
    checkpoints: &Path,
    parallelism: &[&str],
    kills: usize,
    seed: u64,
) {
    crash_until_done_within(work, sql, checkpoints, parallelism, kills, seed, 250..1000);
}

/// [`crash_until_done`], killing each run at a random moment `kill_ms`
/// milliseconds after it starts (later for jobs slow to start reading).
pub fn crash_until_done_within(
    work: &Path,
    sql: &str,
    checkpoints: &Path,
    parallelism: &[&str],
    kills: usize,
    seed: u64,
    kill_ms: std::ops::Range<u64>,
) {
    let checkpoints = checkpoints.to_str().unwrap();
    let mut random = Random(seed);
    let deadline = Instant::now() + Duration::from_secs(240);
    // Every run but the last is killed: the attempt number counts the kills.
    for killed in 0.. {
        assert!(Instant::now() < deadline, "{sql}: not done within 240 s");
        let p = parallelism[killed % parallelism.len()];
        let mut child = flumen(
            &[
                "run",
                sql,
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
            assert!(status.success(), "{sql}: the last run failed");
            return;
        }
        let after =
            Duration::from_millis(kill_ms.start + random.below(kill_ms.end - kill_ms.start));
        assert!(
            !wait_or_kill(&mut child, after),
            "{sql}: finished after {killed} kills, before its kill"
        );
    }
}

/// A binary the project's scripts install (`scripts/services.sh`): under
/// `FLUMEN_TOOLS`, else `/var/lib/flumen/tools` for root, else
/// `~/.cache/flumen/tools`.
pub fn tool(name: &str) -> std::path::PathBuf {
    let tools = match std::env::var("FLUMEN_TOOLS") {
        Ok(t) => std::path::PathBuf::from(t),
        // SAFETY: getuid has no preconditions.
        Err(_) if unsafe { libc::getuid() } == 0 => "/var/lib/flumen/tools".into(),
        Err(_) => {
            std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/flumen/tools")
        }
    };
    tools.join("bin").join(name)
}

/// A TCP relay on a free loopback port to `target`, whose connections a
/// test can cut: a server that goes away and comes back, as the clients
/// see it, with the server's own state kept. Its threads end when it is
/// dropped.
pub struct CutProxy {
    /// The port it listens on.
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CutProxy {
    /// Relays connections on a new port to `127.0.0.1:target`.
    pub fn start(target: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let proxy = CutProxy {
            port: listener.local_addr().unwrap().port(),
            open: Default::default(),
            stop: Default::default(),
            live: Default::default(),
        };
        proxy.open.store(true, Ordering::SeqCst);
        let (open, stop, live) = (proxy.open.clone(), proxy.stop.clone(), proxy.live.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                // While cut, a new connection is closed at once.
                if !open.load(Ordering::SeqCst) {
                    continue;
                }
                client.set_nonblocking(false).unwrap();
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut all = live.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
                all.push(client);
                all.push(server);
            }
        });
        proxy
    }

    /// Closes every relayed connection and refuses new ones for `down`.
    pub fn cut(&self, down: Duration) {
        use std::sync::atomic::Ordering;
        self.open.store(false, Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        std::thread::sleep(down);
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}
