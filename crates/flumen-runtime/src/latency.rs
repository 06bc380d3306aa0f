//! Latency of the rows sinks write: every batch and watermark travels with
//! its [`Origin`], when the source rows behind it became ready (wall
//! clock), and a sink that writes a batch records how long after its origin
//! each row was written. Rows a watermark released (a window's results)
//! also count as emission delay: from when the watermark passed the window's
//! end at the source to the write.

use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;

/// When the source rows behind a batch or a watermark became ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// When the first (oldest) of the rows became ready.
    pub first: Instant,
    /// When the last of them became ready; rows in between are taken to
    /// have become ready evenly spread.
    pub last: Instant,
    /// Released by a watermark (a window firing), not by the rows' arrival.
    pub watermark: bool,
}

impl Origin {
    /// Rows that became ready from `first` to `last`.
    pub fn rows(first: Instant, last: Instant) -> Self {
        Origin {
            first,
            last: last.max(first),
            watermark: false,
        }
    }

    /// The watermark derived from rows of this origin: it could be known
    /// once the first of them was ready, so an emission delay measured from
    /// it is never too short.
    pub fn watermark(self) -> Self {
        Origin {
            first: self.first,
            last: self.first,
            watermark: true,
        }
    }
}

/// Percentiles of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Rows recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// What [`LatencyRecorder::summary`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    /// Every written row whose origin is known, from its origin.
    pub latency: Percentiles,
    /// Rows a watermark released, from when it passed at the source.
    pub emission_delay: Percentiles,
}

/// Microseconds, up to an hour, to three significant digits.
fn histogram() -> Histogram<u64> {
    // Bounds and precision are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

struct Histograms {
    latency: Histogram<u64>,
    emission: Histogram<u64>,
}

/// Latency histograms of a job, filled by its sink subtasks once per
/// written batch (not per row).
pub struct LatencyRecorder {
    histograms: Mutex<Histograms>,
}

impl std::fmt::Debug for LatencyRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyRecorder").finish_non_exhaustive()
    }
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder {
            histograms: Mutex::new(Histograms {
                latency: histogram(),
                emission: histogram(),
            }),
        }
    }
}

/// How many values a batch's rows are recorded as: its rows are spread
/// evenly between its origin's first and last instants.
const STEPS: u64 = 16;

impl LatencyRecorder {
    /// A sink wrote `rows` rows of `origin` at `written`.
    pub fn record(&self, origin: Origin, rows: usize, written: Instant) {
        let rows = rows as u64;
        if rows == 0 {
            return;
        }
        let span = origin.last.saturating_duration_since(origin.first);
        let steps = rows.min(STEPS);
        // A poisoned lock only means another recorder panicked; the
        // histograms stay usable.
        let mut h = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        for step in 0..steps {
            let count = rows / steps + u64::from(step < rows % steps);
            let ready = origin.first + span.mul_f64((step as f64 + 0.5) / steps as f64);
            let us = written.saturating_duration_since(ready).as_micros() as u64;
            h.latency.saturating_record_n(us.max(1), count);
            if origin.watermark {
                h.emission.saturating_record_n(us.max(1), count);
            }
        }
    }

    /// The percentiles recorded so far.
    pub fn summary(&self) -> LatencySummary {
        let h = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        LatencySummary {
            latency: percentiles(&h.latency),
            emission_delay: percentiles(&h.emission),
        }
    }
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rows_spread_between_first_and_last_and_watermarks_count_as_emission() {
        let r = LatencyRecorder::default();
        let t0 = Instant::now();
        // 1,000 rows ready over 10 ms, written 20 ms after the first:
        // latencies from 20 ms down to 10 ms.
        r.record(
            Origin::rows(t0, t0 + Duration::from_millis(10)),
            1000,
            t0 + Duration::from_millis(20),
        );
        let s = r.summary();
        assert_eq!(s.latency.count, 1000);
        assert!((14.0..16.0).contains(&s.latency.p50_ms), "{s:?}");
        assert!(s.latency.max_ms <= 20.0 && s.latency.max_ms > 19.0, "{s:?}");
        assert_eq!(s.emission_delay.count, 0);
        // A window released by a watermark derived from those rows counts
        // from the first of them, as latency and as emission delay.
        let w = Origin::rows(t0, t0 + Duration::from_millis(10)).watermark();
        r.record(w, 3, t0 + Duration::from_millis(50));
        let s = r.summary();
        assert_eq!(s.latency.count, 1003);
        assert_eq!(s.emission_delay.count, 3);
        assert!((49.9..50.1).contains(&s.emission_delay.p50_ms), "{s:?}");
        assert!((49.9..50.1).contains(&s.latency.max_ms), "{s:?}");
    }
}
