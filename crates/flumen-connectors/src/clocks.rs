//! Event time per split (a file, a partition): each split has its own
//! watermark generator, and a source subtask's watermark is the minimum over
//! the splits that still hold it back, as Flink's per-split watermarks do.

use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use flumen_runtime::{WatermarkGenerator, WatermarkStrategy};
use flumen_types::{Result, Watermark};
use tokio::time::Instant;

/// The watermarks of one subtask's splits and the minimum sent last.
pub(crate) struct SplitClocks {
    strategy: Arc<dyn WatermarkStrategy>,
    splits: Vec<SplitClock>,
    emitted: Watermark,
    /// A split without rows this long stops holding the watermark back
    /// until it has rows again.
    idle_after: Option<Duration>,
}

struct SplitClock {
    generator: Box<dyn WatermarkGenerator>,
    latest: Watermark,
    done: bool,
    last_rows: Instant,
}

impl SplitClocks {
    /// Clocks for `splits` splits, each with a generator of `strategy`.
    pub(crate) fn new(
        strategy: &Arc<dyn WatermarkStrategy>,
        splits: usize,
        idle_after: Option<Duration>,
    ) -> Self {
        let mut clocks = SplitClocks {
            strategy: strategy.clone(),
            splits: Vec::new(),
            emitted: Watermark::MIN,
            idle_after,
        };
        for _ in 0..splits {
            clocks.add();
        }
        clocks
    }

    /// Adds a split (a partition found after the start); returns its id.
    pub(crate) fn add(&mut self) -> usize {
        self.splits.push(SplitClock {
            generator: self.strategy.create(),
            latest: Watermark::MIN,
            done: false,
            last_rows: Instant::now(),
        });
        self.splits.len() - 1
    }

    /// The minimum over the splits that hold the watermark back, if it
    /// moved past what was sent.
    pub(crate) fn advanced(&mut self) -> Option<Watermark> {
        let now = Instant::now();
        let idle_after = self.idle_after;
        let min = self
            .splits
            .iter()
            .filter(|c| !c.done)
            .filter(|c| idle_after.is_none_or(|d| now.duration_since(c.last_rows) < d))
            .map(|c| c.latest)
            .min()?;
        (min > self.emitted).then(|| {
            self.emitted = min;
            min
        })
    }

    /// Split `split` produced `batch`: the subtask's new watermark, if any.
    pub(crate) fn on_batch(
        &mut self,
        split: usize,
        batch: &RecordBatch,
    ) -> Result<Option<Watermark>> {
        let clock = &mut self.splits[split];
        clock.last_rows = Instant::now();
        if let Some(wm) = clock.generator.on_batch(batch)? {
            clock.latest = clock.latest.max(wm);
        }
        Ok(self.advanced())
    }

    /// Split `split` has nothing more: it no longer holds the watermark back.
    pub(crate) fn finish(&mut self, split: usize) -> Option<Watermark> {
        self.splits[split].done = true;
        self.advanced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMillisecondArray;
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    /// Event time is the batch's largest timestamp.
    struct Max;
    struct MaxGen;
    impl WatermarkGenerator for MaxGen {
        fn on_batch(&mut self, batch: &RecordBatch) -> Result<Option<Watermark>> {
            let ts = batch
                .column(0)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .and_then(|a| a.iter().flatten().max());
            Ok(ts.map(|ms| Watermark(ms * 1_000_000)))
        }
    }
    impl WatermarkStrategy for Max {
        fn describe(&self) -> String {
            "max".into()
        }
        fn create(&self) -> Box<dyn WatermarkGenerator> {
            Box::new(MaxGen)
        }
    }

    fn at(ms: i64) -> RecordBatch {
        let schema = Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        )]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(TimestampMillisecondArray::from(vec![ms]))],
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_active_split_holds_the_watermark_until_it_idles() {
        let strategy: Arc<dyn WatermarkStrategy> = Arc::new(Max);
        let mut clocks = SplitClocks::new(&strategy, 2, Some(Duration::from_secs(10)));
        assert_eq!(clocks.on_batch(0, &at(5_000)).unwrap(), None);
        assert_eq!(
            clocks.on_batch(1, &at(3_000)).unwrap(),
            Some(Watermark(3_000_000_000))
        );
        assert_eq!(
            clocks.on_batch(1, &at(4_000)).unwrap(),
            Some(Watermark(4_000_000_000))
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(clocks.on_batch(0, &at(9_000)).unwrap(), None);
        // Split 1 has had no rows for 11 s: split 0 alone decides.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(clocks.advanced(), Some(Watermark(9_000_000_000)));
        assert_eq!(clocks.finish(0), None);
    }
}
