//! `rows_per_second`: holds a source subtask to a wall-clock rate, so a
//! bounded job can run long enough to be watched, stopped or killed midway.

use std::time::Duration;

use tokio::time::Instant;

use crate::options::OptionSpec;

/// The option every source connector takes.
pub(crate) const ROWS_PER_SECOND: OptionSpec = OptionSpec::optional(
    "rows_per_second",
    "wall-clock rows per second over all subtasks, for tests and demos (default unlimited)",
);

/// Paces one source subtask.
#[derive(Debug, Clone)]
pub(crate) struct Throttle {
    rows_per_second: f64,
    started: Option<Instant>,
    rows: u64,
}

impl Throttle {
    /// A subtask's share of `rows_per_second` over `parallelism` subtasks;
    /// `None` when unlimited.
    pub(crate) fn new(rows_per_second: Option<u64>, parallelism: usize) -> Option<Self> {
        let total = rows_per_second.filter(|&r| r > 0)?;
        Some(Throttle {
            rows_per_second: total as f64 / parallelism.max(1) as f64,
            started: None,
            rows: 0,
        })
    }

    /// Waits until the rows sent so far are due. Safe to cancel: nothing
    /// changes but the clock's start.
    pub(crate) async fn wait(&mut self) {
        let started = *self.started.get_or_insert_with(Instant::now);
        let due = Duration::from_secs_f64(self.rows as f64 / self.rows_per_second);
        tokio::time::sleep_until(started + due).await;
    }

    /// `rows` more were sent.
    pub(crate) fn sent(&mut self, rows: usize) {
        self.rows += rows as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_subtask_share_of_the_rate() {
        let mut t = Throttle::new(Some(2000), 2).unwrap();
        let start = Instant::now();
        t.wait().await;
        t.sent(500);
        t.wait().await;
        t.sent(500);
        t.wait().await;
        // 1000 rows at 1000 rows/s per subtask: one second.
        assert_eq!(start.elapsed().as_millis(), 1000);
        assert!(Throttle::new(None, 2).is_none());
    }
}
