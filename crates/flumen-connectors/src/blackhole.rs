//! The `blackhole` sink: discards every row (the job counts them), for
//! benchmarks that measure the engine rather than a sink.

use arrow::array::RecordBatch;
use async_trait::async_trait;
use flumen_runtime::{Sink, SinkFactory, TaskContext};
use flumen_types::Result;

/// Makes sinks that drop their input.
pub struct BlackholeSinkFactory;

impl SinkFactory for BlackholeSinkFactory {
    fn describe(&self) -> String {
        "Sink: blackhole".to_string()
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(BlackholeSink))
    }
}

struct BlackholeSink;

#[async_trait]
impl Sink for BlackholeSink {
    async fn write(&mut self, _batch: RecordBatch) -> Result<()> {
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
