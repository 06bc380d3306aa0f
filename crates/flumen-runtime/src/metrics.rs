//! Counters a running job updates once per batch, read by progress reporting.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Job-wide counters, shared by every task of a job. Updated once per batch,
/// never per row.
#[derive(Debug, Default)]
pub struct JobMetrics {
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    bad_records_dropped: AtomicU64,
    bad_records_dead_lettered: AtomicU64,
    late_rows_dropped: AtomicU64,
    state_bytes: AtomicI64,
    peak_state_bytes: AtomicI64,
    /// Rows kept by operators that keep input rows (TopN), with their own
    /// Arrow size and the state bytes that hold them, as last reported.
    kept_rows: AtomicI64,
    kept_arrow_bytes: AtomicI64,
    kept_state_bytes: AtomicI64,
    /// Each sink subtask's latest watermark (registered when the job starts).
    sink_watermarks: Mutex<Vec<Arc<AtomicI64>>>,
    /// When the job started.
    started: std::sync::OnceLock<std::time::Instant>,
    /// Microseconds from the start to the first row a sink wrote (0: none yet).
    first_output_us: AtomicU64,
    /// Microseconds from the start until every task had restored its state
    /// (0: not restored).
    restored_us: AtomicU64,
    /// How long after their origin sinks wrote rows.
    latency: crate::latency::LatencyRecorder,
}

/// What one operator subtask last reported of its state size, so that it
/// reports changes rather than totals.
#[derive(Debug, Default)]
pub struct StateGauge {
    reported: i64,
}

/// What one operator subtask last reported of the rows it keeps.
#[derive(Debug, Default)]
pub struct KeptGauge {
    reported: KeptRowsReport,
}

/// Rows kept by operators that keep whole input rows (TopN): how many, their
/// own Arrow size (values and offsets, packed), and the state bytes that
/// hold them, so the state's overhead over the rows themselves shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeptRowsReport {
    /// Rows kept.
    pub rows: u64,
    /// Their Arrow size.
    pub arrow_bytes: u64,
    /// The state bytes of the operators holding them.
    pub state_bytes: u64,
}

impl JobMetrics {
    /// A place where one sink subtask keeps its latest watermark; taken once
    /// per sink subtask when the job starts.
    pub fn watermark_slot(&self) -> Arc<AtomicI64> {
        let slot = Arc::new(AtomicI64::new(i64::MIN));
        // A poisoned lock only means another registration panicked; the
        // list itself is still whole.
        let mut slots = self
            .sink_watermarks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        slots.push(slot.clone());
        slot
    }

    /// The job's output watermark (ns of event time): the least watermark
    /// any sink subtask has seen, up to which results are complete; `None`
    /// until every sink subtask has one.
    pub fn output_watermark(&self) -> Option<i64> {
        let slots = self
            .sink_watermarks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let least = slots.iter().map(|s| s.load(Ordering::Relaxed)).min()?;
        (least > i64::MIN).then_some(least)
    }

    /// Rows produced by all sources so far.
    pub fn rows_in(&self) -> u64 {
        self.rows_in.load(Ordering::Relaxed)
    }
    /// Rows consumed by all sinks so far.
    pub fn rows_out(&self) -> u64 {
        self.rows_out.load(Ordering::Relaxed)
    }
    /// Malformed records that sources dropped (`bad_data = 'drop'`).
    pub fn bad_records_dropped(&self) -> u64 {
        self.bad_records_dropped.load(Ordering::Relaxed)
    }
    /// Malformed records that sources sent to their dead-letter output
    /// (`bad_data = 'dead_letter'`).
    pub fn bad_records_dead_lettered(&self) -> u64 {
        self.bad_records_dead_lettered.load(Ordering::Relaxed)
    }
    /// Rows that arrived after the watermark had closed their window.
    pub fn late_rows_dropped(&self) -> u64 {
        self.late_rows_dropped.load(Ordering::Relaxed)
    }
    /// Counts rows an operator dropped as late.
    pub fn add_late_rows_dropped(&self, n: usize) {
        if n > 0 {
            self.late_rows_dropped
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    pub(crate) fn add_rows_in(&self, n: usize) {
        self.rows_in.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_rows_out(&self, n: usize) {
        self.rows_out.fetch_add(n as u64, Ordering::Relaxed);
        if self.first_output_us.load(Ordering::Relaxed) == 0 {
            let _ = self.first_output_us.compare_exchange(
                0,
                self.since_start_us(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
    pub(crate) fn start(&self) {
        self.started.get_or_init(std::time::Instant::now);
    }
    pub(crate) fn restored(&self) {
        self.restored_us
            .store(self.since_start_us(), Ordering::Relaxed);
    }
    fn since_start_us(&self) -> u64 {
        self.started
            .get()
            .map_or(1, |t| (t.elapsed().as_micros() as u64).max(1))
    }
    /// Time from the start of the job to the first row a sink wrote.
    pub fn first_output_after(&self) -> Option<std::time::Duration> {
        match self.first_output_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }
    /// Time from the start of the job until every task had taken up its
    /// state from the checkpoint it resumed from.
    pub fn restored_after(&self) -> Option<std::time::Duration> {
        match self.restored_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }
    /// Percentiles of how long after their origin sinks wrote rows, and
    /// of windows' emission delay.
    pub fn latency(&self) -> crate::latency::LatencySummary {
        self.latency.summary()
    }
    /// A sink wrote `rows` rows of `origin` just now.
    pub(crate) fn record_latency(&self, origin: crate::latency::Origin, rows: usize) {
        self.latency.record(origin, rows, std::time::Instant::now());
    }
    /// Bytes of operator state (windows, join rows, TopN rows, groups) held now.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes.load(Ordering::Relaxed).max(0) as u64
    }
    /// The most state held at once so far.
    pub fn peak_state_bytes(&self) -> u64 {
        self.peak_state_bytes.load(Ordering::Relaxed).max(0) as u64
    }
    /// An operator subtask now holds `bytes` of state (it calls this at
    /// watermarks and when it finishes, not per row).
    pub fn report_state(&self, gauge: &mut StateGauge, bytes: usize) {
        let bytes = bytes as i64;
        let delta = bytes - gauge.reported;
        gauge.reported = bytes;
        if delta != 0 {
            let now = self.state_bytes.fetch_add(delta, Ordering::Relaxed) + delta;
            self.peak_state_bytes.fetch_max(now, Ordering::Relaxed);
        }
    }
    /// An operator subtask now keeps `now` (reported with its state, and left
    /// standing when it finishes, so a bounded run's figures remain).
    pub fn report_kept(&self, gauge: &mut KeptGauge, now: KeptRowsReport) {
        let delta = |new: u64, old: u64| new as i64 - old as i64;
        let old = gauge.reported;
        self.kept_rows
            .fetch_add(delta(now.rows, old.rows), Ordering::Relaxed);
        self.kept_arrow_bytes
            .fetch_add(delta(now.arrow_bytes, old.arrow_bytes), Ordering::Relaxed);
        self.kept_state_bytes
            .fetch_add(delta(now.state_bytes, old.state_bytes), Ordering::Relaxed);
        gauge.reported = now;
    }
    /// The rows operators keep, as last reported.
    pub fn kept_rows(&self) -> KeptRowsReport {
        let load = |a: &AtomicI64| a.load(Ordering::Relaxed).max(0) as u64;
        KeptRowsReport {
            rows: load(&self.kept_rows),
            arrow_bytes: load(&self.kept_arrow_bytes),
            state_bytes: load(&self.kept_state_bytes),
        }
    }
    /// Counts malformed records a source sent to its dead-letter output.
    pub fn add_bad_records_dead_lettered(&self, n: usize) {
        self.bad_records_dead_lettered
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Counts malformed records a source dropped.
    pub fn add_bad_records_dropped(&self, n: usize) {
        self.bad_records_dropped
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}
